"""PyTorch backend metadata; the implementation lives in ``backend.py`` and is imported on first use."""

from unidl.backends import BackendSpec

SPEC = BackendSpec(name="torch", aliases=("pytorch",), extra="torch", priority=0,
                   required_modules=lambda: ("torch",),
                   export_formats={"torch_export": "a .pt2 file: torch.export.load(path).module()(x)",
                                   "onnx": "an .onnx file: onnxruntime.InferenceSession(path).run(None, {'x': x})"})

"""TensorFlow backend metadata; the implementation lives in ``backend.py`` and is imported on first use."""

from unidl.backends import BackendSpec

SPEC = BackendSpec(name="tensorflow", aliases=("tf",), extra="tensorflow", priority=1,
                   required_modules=lambda: ("tensorflow",),
                   # (not tf.saved_model.load(path).serve(x): the loaded object owns the variables, and serve fails
                   # once it is gone)
                   export_formats={"saved_model": "a SavedModel directory: loaded = tf.saved_model.load(path); "
                                                  "loaded.serve(x)"})

"""The op registry: every functional op a backend provides is declared here once, with its signature.

``unidl/ops.py`` declares each op with ``@declare``: the declaration's signature and docstring are
the contract, the registry builds the public dispatcher ``ud.ops.<name>`` from them, and
``interface.OPS`` (the ops every backend must have) is derived from the registry. Optional ops
(a framework's fused kernel, used only as a fast path) are declared as such, and the front end
reaches them only through ``optional_op``, never by guessing an attribute name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from unidl.errors import BackendInterfaceError


@dataclass(frozen=True)
class OpSpec:
    """One declared op: ``name``, the declaring function (signature and docstring), whether a backend
    may lack it (``optional``) and whether it is a user-facing ``ud.ops`` function (``public``)."""

    name: str
    declaration: Callable
    optional: bool
    public: bool
    torch_names: tuple | None = None

    @property
    def signature(self) -> inspect.Signature:
        """The public signature: the declaration's, with its ``torch_names`` (``public_signature``)."""
        return public_signature(inspect.signature(self.declaration), self.torch_names)


def public_signature(signature: inspect.Signature, torch_names: tuple | None) -> inspect.Signature:
    """``signature`` with ``torch_names`` (``(renamed, fixed)``, ``unidl.torch_names``): each renamed parameter under
    torch's name, and torch's ``fixed`` options keyword-only, with torch's defaults, before a ``**`` parameter."""
    if not torch_names:
        return signature
    renamed, fixed = torch_names
    shown = [p.replace(name=renamed.get(p.name, p.name)) for p in signature.parameters.values()]
    variadic = [p for p in shown if p.kind is p.VAR_KEYWORD]
    options = [inspect.Parameter(o, inspect.Parameter.KEYWORD_ONLY, default=v) for o, v in fixed.items()]
    return signature.replace(parameters=[p for p in shown if p.kind is not p.VAR_KEYWORD] + options + variadic)


REGISTRY: dict[str, OpSpec] = {}

# what a dispatcher hands to its parameter's converter (``declare``'s ``arrays``): NumPy arrays and scalars, Python
# sequences and numbers (bool is an int), which no framework's tensor is
CONVERTED = (np.ndarray, np.generic, list, tuple, int, float)


def _dispatcher(name: str, declaration: Callable, resolve_ops: Callable, inputs: dict | None = None,
                arrays: dict | None = None, dispatch: bool = True, dims: dict | None = None,
                tensors: tuple = (), torch_names: tuple | None = None) -> Callable:
    """A function with ``declaration``'s exact signature whose body is ``resolve_ops().<name>(...)`` (without
    ``dispatch``: ``declaration(...)``, the front end's own body): compiled once, so a call costs what a
    hand-written forwarding function costs. ``inputs`` maps parameter names to a check
    ``check(op_name, parameter_name, value) -> value`` that the body applies to that argument first; before it,
    a NumPy array or scalar, a list, a tuple or a Python number (``CONVERTED``) given to a parameter ``arrays``
    names becomes ``arrays[name](op_name, parameter_name, value)`` (an ``isinstance`` test, tens of nanoseconds,
    where the argument is a tensor). ``dims`` maps parameter names that take axes to ``(tensor_parameter, check)``:
    the body calls ``check(op_name, parameter_name, value, tensor)`` after the other checks (an axis in range of
    that tensor's rank). ``tensors``: the parameters that take tensors, whose values of a type not yet seen to pass
    on the backend in force (``unidl.native_tensors``: a set lookup, tens of nanoseconds) go through
    ``native_tensors.admitted`` first, which refuses another framework's tensor and converts a ``CONVERTED`` value
    as ``arrays`` says, in place of ``arrays``' own test. ``torch_names``: ``(renamed, fixed)``, the op's entry of
    ``unidl.torch_names.TORCH_NAMES``: the public signature takes torch's names (``_public_parameters``)."""
    inputs, arrays, dims = inputs or {}, arrays or {}, dims or {}
    signature = inspect.signature(declaration)
    unknown = (set(inputs) | set(arrays) | set(dims) | {t for t, _ in dims.values()} | set(tensors)) - \
        set(signature.parameters)
    if unknown:
        raise BackendInterfaceError(f"op {name!r} checks inputs {sorted(unknown)} it does not declare")
    params, forwarded, prologue, defaults, kwdefaults, public = _public_parameters(name, signature, torch_names)
    converted = "".join(f"    if isinstance({p}, _CONVERTED): {p} = _array_{p}({name!r}, {p!r}, {p})\n"
                        for p in arrays if p not in tensors)
    if tensors:  # (the backend's set read once a call: the backend in force, else the default, else found anew)
        # (the context variable read in a statement of its own: torch.compile breaks its graph at that read and
        # resumes with the stack as it was; a ``_PASSING.get`` bound there, a new object each call, failed the
        # resumed code's guards at every call, which compiled it again)
        converted = "    _in_force = _override.get() or _config._default_backend\n" + \
            "    _passing = _PASSING.get(_in_force) or _passing_types()\n" + \
            "".join(f"    if type({p}) not in _passing: {p} = _admitted({name!r}, {p!r}, {p}"
                    f"{f', _array_{p}' if p in arrays else ''})\n" for p in tensors) + converted
    checks = "".join(f"    {p} = _check_{p}({name!r}, {p!r}, {p})\n" for p in inputs)
    checks += "".join(f"    _dims_{p}({name!r}, {p!r}, {p}, {tensor})\n" for p, (tensor, _) in dims.items())
    target = f"_resolve_ops().{name}" if dispatch else "_declaration"
    source = (f"def {name}({', '.join(params)}):\n{prologue}{converted}{checks}"
              f"    return {target}({', '.join(forwarded)})\n")
    namespace = {"_resolve_ops": resolve_ops, "_declaration": declaration, "_CONVERTED": CONVERTED, **public,
                 **{f"_check_{p}": check for p, check in inputs.items()},
                 **{f"_array_{p}": convert for p, convert in arrays.items()},
                 **{f"_dims_{p}": check for p, (_, check) in dims.items()}}
    if tensors:
        from unidl import config, native_tensors  # (imported when ``unidl.ops`` declares its ops: they import this)

        namespace.update(_PASSING=native_tensors.PASSING, _override=config._backend_override, _config=config,
                         _passing_types=native_tensors.passing_types, _admitted=native_tensors.admitted)
    exec(compile(source, f"<unidl.ops.{name}>", "exec"), namespace)
    function = namespace[name]
    function.__defaults__ = defaults
    function.__kwdefaults__ = kwdefaults
    function.__doc__ = declaration.__doc__
    function.__module__ = declaration.__module__
    function.__qualname__ = name
    function.__wrapped__ = declaration
    if torch_names:
        function.__signature__ = public["_signature"]
    return function


# the default of a parameter whose argument may come under either of two names (``_public_parameters``)
_REQUIRED = object()


def _public_parameters(name: str, signature: inspect.Signature, torch_names: tuple | None):
    """The generated dispatcher's parameters and their forwarding to the declaration (by the declaration's names),
    its defaults, and, with ``torch_names`` (``(renamed, fixed)``, ``unidl.torch_names``): the prologue that takes
    each renamed argument under torch's name or, by keyword, the declared one (never both), refuses a ``fixed``
    option's other values (``unidl.torch_names.refuse``), and the public signature (``_signature``, with the other
    names the prologue reads). A renamed required parameter, and a required one after it, default to
    ``_REQUIRED``, checked by the prologue, so that either name may give the argument. The prologue's common path
    (no former name, no option) is one identity test per name: a call costs tens of nanoseconds more."""
    renamed, fixed = torch_names or ({}, {})
    declared = signature.parameters
    unknown = set(renamed) - set(declared)
    public_names = [renamed.get(p, p) for p in declared] + list(fixed)
    clashes = {n for n in public_names if public_names.count(n) > 1} | (set(renamed) & set(public_names))
    if unknown or clashes:
        raise BackendInterfaceError(f"op {name!r}'s torch names rename {sorted(unknown)} it does not declare or "
                                    f"give one name twice: {sorted(clashes)}")
    params, keyword_only, forwarded, required = [], [], [], []
    defaults, kwdefaults, seen_default, public_defaults = [], {}, False, {}
    for p in declared.values():
        public = renamed.get(p.name, p.name)
        # (a renamed required parameter, and a positional one after a default, may come by keyword alone)
        default = p.default if p.default is not p.empty else _REQUIRED
        if p.kind is p.VAR_POSITIONAL:
            params.append(f"*{p.name}")
            forwarded.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            forwarded.append(f"**{p.name}")
        elif p.kind is p.KEYWORD_ONLY:
            keyword_only.append(public)
            forwarded.append(f"{p.name}={p.name}")
            if p.default is not p.empty or p.name in renamed:
                kwdefaults[public] = default
                required += [(public, p.name)] if default is _REQUIRED else []
        else:
            params.append(public)
            forwarded.append(p.name)
            seen_default = seen_default or p.default is not p.empty or p.name in renamed
            if seen_default:
                defaults.append(default)
                required += [(public, p.name)] if default is _REQUIRED else []
        public_defaults[p.name] = default
    prologue = ""
    if renamed:  # (the declared names, by keyword, are the locals the body reads)
        olds = tuple(renamed)
        prologue += (f"    if {' and '.join(f'{old} is _REQUIRED' for old in olds)}:\n"
                     f"        {', '.join(olds)}, = {', '.join(renamed[old] for old in olds)},\n"
                     f"    else:\n        {', '.join(olds)}, = _either_name({name!r}, ("
                     + "".join(f"({renamed[old]!r}, {renamed[old]}, {old!r}, {old}, _public_default_{old}), "
                               for old in olds) + "))\n")
    if required:
        pairs = "".join(f"({public!r}, {local}), " for public, local in required)
        prologue += (f"    if {' or '.join(f'{local} is _REQUIRED' for _, local in required)}:\n"
                     f"        _missing_one({name!r}, ({pairs}))\n")
    if fixed:
        tests = [f"{o} {'is not' if v is None or isinstance(v, bool) else '!='} _fixed_{o}" for o, v in fixed.items()]
        prologue += (f"    if {' or '.join(tests)}:\n"
                     f"        _refuse_one({name!r}, ({''.join(f'({o!r}, {o}, _fixed_{o}), ' for o in fixed)}))\n")
    for option, value in fixed.items():
        keyword_only.append(option)
        kwdefaults[option] = value
    keyword_only += list(renamed)
    kwdefaults.update((old, _REQUIRED) for old in renamed)
    if keyword_only:
        params += ([] if any(p.startswith("*") for p in params) else ["*"]) + keyword_only
    params += [f"**{p.name}" for p in declared.values() if p.kind is p.VAR_KEYWORD]
    namespace = {}
    if torch_names:
        namespace = {"_REQUIRED": _REQUIRED, "_either_name": _either_name, "_missing_one": _missing_one,
                     "_refuse_one": _refuse_one, "_signature": public_signature(signature, torch_names),
                     **{f"_public_default_{old}": public_defaults[old] for old in renamed},
                     **{f"_fixed_{o}": v for o, v in fixed.items()}}
    return params, forwarded, prologue, tuple(defaults) or None, kwdefaults or None, namespace


def _either_name(owner: str, arguments: tuple) -> tuple:
    """Each renamed argument, from ``(torch's name, its value, the former name, its value, torch's name's default)``:
    the former name's value where it was given (and torch's name was left at its default), else torch's; both
    given is a ``TypeError``."""
    from unidl import torch_names

    taken = []
    for public, value, old, old_value, default in arguments:
        if old_value is _REQUIRED:
            taken.append(value)
        elif value is not default:
            raise torch_names.both_given(owner, public, old)
        else:
            taken.append(old_value)
    return tuple(taken)


def _missing_one(owner: str, arguments: tuple) -> None:
    """Python's missing-argument ``TypeError`` for the first of ``(name, value)`` left at ``_REQUIRED``."""
    from unidl import torch_names

    raise torch_names.missing(owner, next(public for public, value in arguments if value is _REQUIRED))


def _refuse_one(owner: str, options: tuple) -> None:
    """``unidl.torch_names.refuse`` for each of ``(option, value, the one value taken)`` given another value."""
    from unidl import torch_names

    for option, value, default in options:
        if value is not default and (default is None or isinstance(default, bool) or value != default):
            torch_names.refuse(owner, option, value, default)


def declare(resolve_ops: Callable, *, name: str | None = None, optional: bool = False, public: bool = True,
            dispatch: bool = True, inputs: dict | None = None, arrays: dict | None = None, dims: dict | None = None,
            tensors: tuple = (), torch_names: tuple | None = None):
    """Decorator for the declarations in ``unidl/ops.py``: register the op and return its dispatcher
    (or the declared function itself with ``dispatch=False``, when the front end adds behaviour of
    its own before calling the backend, e.g. drawing dropout's generator). ``inputs``: per parameter name, a
    check the dispatcher applies to that argument before the backend sees it (``unidl.input_checks``'s dtype
    rules). ``arrays``: per parameter name, the function that converts a value of ``CONVERTED`` given to it first
    (with ``dispatch=False`` too: the declared function is then called through a forwarding function that does
    it). ``dims``: the parameters that take axes of a tensor parameter, and their range checks (``_dispatcher``).
    ``tensors``: the parameters that take tensors, where another framework's tensor is a ``BackendMismatchError``
    (``_dispatcher``). ``torch_names``: the public signature's torch names (``_dispatcher``)."""

    def register(declaration: Callable) -> Callable:
        op_name = name or declaration.__name__
        if op_name in REGISTRY:
            raise BackendInterfaceError(f"op {op_name!r} is declared twice")
        REGISTRY[op_name] = OpSpec(op_name, declaration, optional, public, torch_names)
        if not dispatch and not arrays and not dims and not inputs and not tensors and not torch_names:
            return declaration  # (with checks of its inputs: the dispatcher applies them, then calls it)
        return _dispatcher(op_name, declaration, resolve_ops, inputs, arrays, dispatch, dims, tensors, torch_names)

    return register


def composed(resolve_ops: Callable, function: Callable, tensors: tuple, arrays: dict | None = None,
             torch_names: tuple | None = None) -> Callable:
    """``function``, a public function composed of declared ops (not one a backend provides, so not registered),
    called through a dispatcher that checks its ``tensors`` parameters, and converts its ``arrays`` ones, as a
    declared op's, its public signature with ``torch_names`` (``_dispatcher``)."""
    return _dispatcher(function.__name__, function, resolve_ops, arrays=arrays, dispatch=False, tensors=tensors,
                       torch_names=torch_names)


def _load_declarations() -> None:
    import unidl.ops  # noqa: F401  (declares every op)


def required_ops() -> tuple[str, ...]:
    """Names of the ops every backend's ``ops`` namespace must provide."""
    _load_declarations()
    return tuple(name for name, spec in REGISTRY.items() if not spec.optional)


def optional_ops() -> tuple[str, ...]:
    """Names of the ops a backend may provide as a fast path."""
    _load_declarations()
    return tuple(name for name, spec in REGISTRY.items() if spec.optional)


def optional_op(ops, name: str):
    """The backend's implementation of the optional op ``name``, or None where it has none."""
    spec = REGISTRY.get(name)
    if spec is None or not spec.optional:
        raise BackendInterfaceError(f"{name!r} is not a declared optional op; declared: {', '.join(optional_ops())}")
    return getattr(ops, name, None)


def check_backend_ops(backend_name: str, ops) -> None:
    """Fail loudly, naming every problem, if ``ops`` lacks a required op or implements an op (required
    or optional) with fewer positional parameters than its declaration passes."""
    _load_declarations()
    problems = []
    for name, spec in REGISTRY.items():
        implementation = getattr(ops, name, None)
        if implementation is None:
            if not spec.optional:
                problems.append(f"{name} (missing)")
            continue
        if not callable(implementation):
            problems.append(f"{name} (not callable)")
            continue
        try:
            implemented = inspect.signature(implementation).parameters.values()
        except (TypeError, ValueError):
            continue  # a builtin without an introspectable signature: checked by the parity tests instead
        if any(p.kind is p.VAR_POSITIONAL for p in implemented):
            continue
        positional = [p for p in implemented if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        declared = [p for p in inspect.signature(spec.declaration).parameters.values()  # (the names it passes)
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < len(declared):
            problems.append(f"{name} (takes {len(positional)} positional parameters, the declaration "
                            f"passes {len(declared)}: {', '.join(p.name for p in declared)})")
    if problems:
        raise BackendInterfaceError(f"backend {backend_name!r} ops do not meet the op registry: {'; '.join(problems)}")

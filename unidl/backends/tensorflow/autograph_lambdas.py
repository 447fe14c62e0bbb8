"""AutoGraph's reading of a lambda's source, with each source file parsed once.

To convert a lambda, AutoGraph (``tensorflow/python/autograph/pyct/parser.py``, ``_parse_lambda``) parses the whole
file that defines it and picks the lambda whose lines span the lambda's first line, for every lambda it converts:
half a second for a file of 1,500 lines, paid again for each lambda that file passes to ``ud.function`` (a table
of ops as lambdas, traced once: 17 s of its 18). ``parse_lambda`` gives the same node and source, from one parse
of the file kept while its text is unchanged; the chosen node is a copy, as AutoGraph edits the node it gets.
Where several lambdas span those lines, the one of the lambda's signature is taken, as AutoGraph takes it, and
AutoGraph's error is raised where that leaves none or several; where no lambda or no source is found, AutoGraph's
own function gives its own answer or error. One difference, on purpose: a lambda in a decorator (a parametrize
table) is found, where AutoGraph's search ends before it (the decorated statement's line is its ``def``'s) and
AutoGraph then runs it unconverted after parsing the file again and logging every lambda in it.
"""

from __future__ import annotations

import collections
import copy
import inspect
import linecache

import gast
from tensorflow.python.autograph.pyct import errors, parser

_autographs_parse_lambda = parser._parse_lambda
# source file -> (its text, its top-level statements' lines, [(statement index, lambda node, first, last line)]),
# the files read most recently (a notebook makes a "file" of each cell it runs)
_FILES: collections.OrderedDict = collections.OrderedDict()
_KEPT_FILES = 64


def install() -> None:
    """Makes AutoGraph read lambdas through ``parse_lambda`` (once per process)."""
    if parser._parse_lambda is _autographs_parse_lambda:
        parser._parse_lambda = parse_lambda


def parse_lambda(lam):
    """``parser._parse_lambda(lam)``: the lambda's AST node (line numbers relative to its first line) and source."""
    try:
        path = inspect.getsourcefile(lam)
        lines = linecache.getlines(path, inspect.getmodule(lam).__dict__)
    except Exception:  # no file or module (a prompt, exec): AutoGraph's own function says what it says
        return _autographs_parse_lambda(lam)
    source = "".join(lines)
    tops, lambdas = _lambdas_of(path, source)
    first = lam.__code__.co_firstlineno
    # as AutoGraph: the top-level statements up to the last one starting at or before the lambda's first line
    searched = next((i for i, top in enumerate(tops) if top is not None and top > first), len(tops))
    candidates = [(node, low, high) for i, node, low, high in lambdas if i < searched and low <= first <= high]
    if not candidates:
        return _autographs_parse_lambda(lam)
    if len(candidates) > 1:  # several lambdas on its lines: those of its signature, as AutoGraph narrows them
        candidates = [c for c in candidates if parser._node_matches_argspec(c[0], lam)]
    if len(candidates) != 1:
        _raise_ambiguous(lam, candidates)
    (node, low, high), = candidates
    return parser._without_context(copy.deepcopy(node), lines, low, high)


def _raise_ambiguous(lam, matches):
    """AutoGraph's error for a lambda it cannot tell from others on its lines with the same signature (two lambdas
    of one line, ``(lambda x: f(x), lambda x: g(x))``): the caller runs such a function as it is, unconverted."""
    matches = "\n".join("Match {}:\n{}\n".format(i, parser.unparse(copy.deepcopy(node), include_encoding_marker=False))
                        for i, (node, _, _) in enumerate(matches))
    raise errors.UnsupportedLanguageElementError(
        f"could not parse the source code of {lam}: found multiple definitions"
        " with identical signatures at the location. This error"
        " may be avoided by defining each lambda on a single line and with"
        f" unique argument names. The matching definitions were:\n{matches}")


def _lambdas_of(path, source):
    """The line numbers of ``source``'s top-level statements, and its lambdas with the lines each spans (as
    AutoGraph measures them); parsed once for each text of the file."""
    known = _FILES.get(path)
    if known is not None and known[0] == source:
        _FILES.move_to_end(path)
        return known[1]
    tops, lambdas = [], []
    for index, statement in enumerate(parser.parse(source, preamble_len=0, single_node=False)):
        # a decorated function or class starts at its first decorator (its node's line is the ``def``'s): a
        # lambda in a decorator (a test's parametrize table) is found (AutoGraph's search missed it, parsed
        # the file again, logged every lambda of it and ran the lambda unconverted)
        line = getattr(statement, "lineno", None)
        tops.append(None if line is None else min(
            [line, *(decorator.lineno for decorator in getattr(statement, "decorator_list", ()))]))
        for node in gast.walk(statement):
            if isinstance(node, gast.Lambda):
                lambdas.append((index, node, *_span(node)))
    _FILES[path] = source, (tops, lambdas)
    _FILES.move_to_end(path)
    while len(_FILES) > _KEPT_FILES:
        _FILES.popitem(last=False)
    return tops, lambdas


def _span(lam):
    """The first and last lines of a lambda node, as ``_parse_lambda`` finds them."""
    low, high = parser.MAX_SIZE, 0
    for node in gast.walk(lam):
        low = min(low, getattr(node, "lineno", low))
        end = getattr(node, "end_lineno", None)
        high = max(high, end if end is not None else getattr(node, "lineno", high))
    return low, high

"""Path globs of the rule language (SPEC section 4)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.errors import PolicyError
from stockade.policy import patterns
from stockade.policy.patterns import (
    compile_pattern,
    escape_path,
    is_literal,
    literal_prefix,
    may_overlap,
    tree_root,
    validate_pattern,
)

MATCHES = [
    # pattern, path, expected
    ("/usr/***", "/usr", True),
    ("/usr/***", "/usr/bin", True),
    ("/usr/***", "/usr/a/b/c", True),
    ("/usr/***", "/usrx", False),
    ("/usr/***", "/us", False),
    ("/usr/***", "/", False),
    ("/***", "/", True),
    ("/***", "/etc/passwd", True),
    ("/usr/lib/***", "/usr/lib64", False),
    ("/tmp/*", "/tmp/x", True),
    ("/tmp/*", "/tmp/x/y", False),  # * never crosses "/"
    ("/tmp/*", "/tmp", False),
    ("/tmp/*.txt", "/tmp/a.txt", True),
    ("/tmp/*.txt", "/tmp/d/a.txt", False),
    ("/tmp/**.txt", "/tmp/d/e/a.txt", True),
    ("/tmp/**", "/tmp/d/e", True),
    ("/tmp/**", "/tmp", False),
    ("/a/**/b", "/a/x/y/b", True),
    ("/a/**/b", "/a/xb", False),
    ("/home/*/.ssh", "/home/u/.ssh", True),
    ("/home/*/.ssh", "/home/u/v/.ssh", False),
    ("/home/*/.ssh/***", "/home/u/.ssh/id_rsa", True),
    ("/home/*/.ssh/***", "/home/u/.sshx", False),
    ("/f?o", "/foo", True),
    ("/f?o", "/f/o", False),
    ("/f?o", "/fo", False),
    ("/[ab]c", "/ac", True),
    ("/[ab]c", "/cc", False),
    ("/[!ab]c", "/cc", True),
    ("/[^ab]c", "/ac", False),
    ("/x[!a]y", "/x/y", False),  # a negated class never matches "/"
    ("/x[+-0]y", "/x/y", False),  # nor does a range that spans "/"
    ("/x[+-0]y", "/x.y", True),
    ("/[]]", "/]", True),
    ("/[a-]", "/-", True),
    ("/[*]", "/*", True),
    ("/[*]", "/a", False),
    ("/etc/passwd", "/etc/passwd", True),
    ("/etc/passwd", "/etc/passwd2", False),
    ("/a.b", "/axb", False),  # "." is not a regex wildcard
    ("/a+(b)", "/a+(b)", True),
    ("/n*", "/n\nx", True),  # a newline in a file name is just a character
    ("/a/**", "/a/b\n/c", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), MATCHES)
def test_match_table(pattern: str, path: str, expected: bool) -> None:
    assert compile_pattern(pattern).match(path) is expected


VALID = [
    ("/", "/"),
    ("/usr/", "/usr"),
    ("//usr//lib///", "/usr/lib"),
    ("/usr/***/", "/usr/***"),
    ("/***", "/***"),
    ("/a/.b/..c/...", "/a/.b/..c/..."),
    ("/a/[.]", "/a/[.]"),
]


@pytest.mark.parametrize(("pattern", "canonical"), VALID)
def test_validate_normalises(pattern: str, canonical: str) -> None:
    assert validate_pattern(pattern) == canonical


INVALID = [
    ("usr/bin", "expected an absolute path"),
    ("", "expected an absolute path"),
    ("/a\0b", "NUL"),
    ("/a/../b", "'..' component"),
    ("/a/./b", "'.' component"),
    ("/a/..", "'..' component"),
    ("/a/[bc", "unclosed '['"),
    ("/a/[b/c]", "never matches '/'"),
    ("/a/[z-a]", "bad class range"),
    ("/a/***/b", "final '/***'"),
    ("/a***", "final '/***'"),
    ("/a/****", "final '/***'"),
    ("/a\nb", "line break"),
    ("/a ", "ends in whitespace"),
    ("/a\t/", "ends in whitespace"),
]


@pytest.mark.parametrize(("pattern", "why"), INVALID)
def test_validate_rejects(pattern: str, why: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(why)) as info:
        validate_pattern(pattern)
    # The message quotes the pattern, so the user sees which one.
    assert repr(pattern) in str(info.value)


def test_compile_is_cached() -> None:
    assert compile_pattern("/usr/***") is compile_pattern("/usr/***")


def test_compile_rejects_invalid() -> None:
    with pytest.raises(PolicyError):
        compile_pattern("/a/../b")


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [("/etc/passwd", True), ("/usr/***", False), ("/a?", False), ("/[x]", False), ("/a]", True)],
)
def test_is_literal(pattern: str, literal: bool) -> None:
    assert is_literal(pattern) is literal


@pytest.mark.parametrize(
    ("pattern", "root"),
    [
        ("/usr/***", "/usr"),
        ("/***", "/"),
        ("/usr/lib/***", "/usr/lib"),
        ("/usr", None),
        ("/usr/*/***", None),
        ("/usr/**", None),
    ],
)
def test_tree_root(pattern: str, root: str | None) -> None:
    assert tree_root(pattern) == root


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("/usr/lib/*.so", "/usr/lib"),
        ("/usr/***", "/usr"),
        ("/etc/passwd", "/etc/passwd"),
        ("/*", "/"),
        ("/a*/b", "/"),
        ("/a/b?/c", "/a"),
        ("/***", "/"),
    ],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("/usr/***", "/etc/***", False),
        ("/usr/***", "/usr/lib/*.so", True),
        ("/usr/***", "/usrx/***", False),
        ("/home/*/.ssh", "/home/u/***", True),
        ("/etc/shadow", "/etc/***", True),
        ("/etc/shadow", "/etc/passwd", False),
        ("/etc/shadow", "/usr/***", False),
        ("/***", "/anything/*", True),
        ("/a/*", "/b/*", False),
    ],
)
def test_may_overlap(a: str, b: str, overlap: bool) -> None:
    assert may_overlap(a, b) is overlap
    assert may_overlap(b, a) is overlap


def test_escape_path() -> None:
    assert escape_path("/data/[x]*?") == "/data/[[]x][*][?]"
    assert escape_path("/a ") == "/a[ ]"
    assert compile_pattern(escape_path("/data/[x]*?")).match("/data/[x]*?")
    assert not compile_pattern(escape_path("/data/*")).match("/data/a")


# -- properties ---------------------------------------------------------------

component = st.text(
    alphabet=st.characters(blacklist_characters="/\0*?[", codec="utf-8"),
    min_size=1,
    max_size=8,
).filter(lambda c: c not in (".", "..") and not any(x in patterns._LINE_BREAKS for x in c))
paths = st.lists(component, min_size=1, max_size=5).map(lambda cs: "/" + "/".join(cs))


@given(paths)
def test_escaped_path_matches_itself_only(path: str) -> None:
    pattern = escape_path(path)
    matcher = compile_pattern(validate_pattern(pattern))
    assert matcher.match(path)
    assert not matcher.match(path + "x")
    assert not matcher.match(path + "/x")


@given(paths, st.lists(component, max_size=3))
def test_tree_matches_everything_beneath(path: str, below: list[str]) -> None:
    pattern = escape_path(path) + "/***"
    matcher = compile_pattern(pattern)
    assert matcher.match(path)
    assert matcher.match("/".join([path, *below]))
    assert not matcher.match(path + "x")


@given(paths, paths)
def test_may_overlap_is_conservative(a: str, b: str) -> None:
    # When two trees are called disjoint, no path is under both.
    ta, tb = escape_path(a) + "/***", escape_path(b) + "/***"
    if not may_overlap(ta, tb):
        assert not compile_pattern(ta).match(b)
        assert not compile_pattern(tb).match(a)


@given(paths)
def test_star_never_crosses_a_slash(path: str) -> None:
    assert not compile_pattern("/*").match(path) or path.count("/") == 1


# -- patterns with many wildcards: no exponential matching --------------------

GLOB_PARTS = st.sampled_from(["a", "b", "*", "**", "?", "[ab]", "[!a]", "/", "x/", "a*"])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(GLOB_PARTS, min_size=1, max_size=8),
    st.booleans(),
    st.text(alphabet="ab/x", max_size=14),
)
def test_state_set_matcher_agrees_with_the_regex(parts: list[str], tree: bool, tail: str) -> None:
    """_Glob (used for patterns with 3+ wildcard runs) means exactly what
    the regular expression means, on any pattern and path."""
    from stockade.policy.patterns import _Glob, _regex

    text = "/" + "".join(parts)
    if tree:
        text = text.rstrip("/") + "/***"
    try:
        canonical = validate_pattern(text)
    except PolicyError:
        return
    path = "/" + tail
    assert _Glob(canonical).match(path) == (
        _regex(canonical, canonical).fullmatch(path) is not None
    )


def test_many_wildcards_stay_linear_on_hostile_paths() -> None:
    """A sandboxed program chooses the paths: three wildcard runs on a
    4000-character path took the backtracking regex 34 s; the state-set
    matcher answers at once (no timing asserted: the test would hang)."""
    for pattern in ("/**a*a*b", "/**a**a**b", "/**/**/**/x", "/*a*a*a*b/***"):
        m = compile_pattern(pattern)
        assert not m.match("/" + "a" * 4000)
        assert not m.match("/" + "a/" * 2000)
    assert compile_pattern("/**a*a*b").match("/x/yaza-b")

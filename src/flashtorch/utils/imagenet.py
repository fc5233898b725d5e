"""The 1000 ImageNet class names, looked up by name or by index.

The names, in index order, ship with flashtorch as package data (``imagenet_classes.txt``,
generated from torchvision's ``_IMAGENET_CATEGORIES``), so no download and no torchvision are
needed at run time.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from functools import lru_cache
from importlib import resources
from typing import Any

from ..errors import ClassNameError

_DATA_FILE = "imagenet_classes.txt"
_SEPARATORS = re.compile(r"[\s_\-]+")


def _spaced(text: str) -> str:
    """Treat ``_`` and ``-`` as spaces, collapse runs of spaces, strip."""
    return _SEPARATORS.sub(" ", text).strip()


def _normalize(text: str) -> str:
    """:func:`_spaced`, lower-cased."""
    return _spaced(text).lower()


@lru_cache(maxsize=1)
def _read_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Read the immutable package-data file once: ``(names, normalized_names)``."""
    text = resources.files("flashtorch.utils").joinpath(_DATA_FILE).read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    return names, tuple(_normalize(n) for n in names)


#: Extra words that tell apart the classes whose names differ only in case or by a suffix
#: (WordNet glosses), so that qualified queries such as FlashTorch 0.1.3's
#: ``"crane wading bird"`` or ``"cardigan clothing"`` resolve.
_QUALIFIERS: dict[int, str] = {
    134: "wading bird",
    264: "corgi dog welsh",
    474: "clothing sweater jacket",
    517: "lifting device machine",
    638: "tights leotard",
    639: "swimsuit swimming costume",
}


@lru_cache(maxsize=1)
def _dict() -> dict[str, int]:
    return {name: i for i, name in enumerate(_read_names()[0])}


def _as_dict() -> dict[str, int]:
    """A fresh name -> index dict (the cached one stays private and unchanged)."""
    return dict(_dict())


@lru_cache(maxsize=1)
def _word_sets() -> tuple[tuple[frozenset[str], frozenset[str]], ...]:
    """Per class: ``(words of its name, words of its name and qualifiers)``."""
    out = []
    for i, norm in enumerate(_read_names()[1]):
        words = frozenset(norm.split())
        out.append((words, words | frozenset(_QUALIFIERS.get(i, "").split())))
    return tuple(out)


def _format(matches: list[tuple[int, str]], limit: int = 12) -> str:
    shown = ", ".join(f"{name!r} ({index})" for index, name in matches[:limit])
    more = len(matches) - limit
    return shown + (f" and {more} more" if more > 0 else "")


class ImageNetIndex(Mapping):
    """Map ImageNet class names to indices and back; a read-only ``Mapping`` name -> index.

    As a ``Mapping`` (like FlashTorch 0.1.3's) its keys are the 1000 class names in index order
    and its values their indices: ``keys()``, ``values()``, ``items()``, ``get()`` and
    ``dict(index)`` work.

    Lookup by name is forgiving about case, extra spaces, underscores and hyphen-vs-space, and
    resolves in four tiers, stopping at the first tier that matches anything:

    1. exact name (``"great grey owl"``),
    2. the query as whole words inside a name (``"grey owl"``),
    3. the query as a substring of a name (``"guacam"``),
    4. word by word, for queries of several words that are not a name: the one class whose
       name (with a few qualifiers for names that differ only in case or by a suffix, e.g.
       ``"crane wading bird"``) holds every word of the query, else the class with the longest
       name whose words all appear in the query (``"dalmatian dog"`` -> 251, as in 0.1.3).

    Case decides only between names that differ in nothing else (``"Cardigan"``, the dog, is
    264; ``"cardigan"``, the sweater, is 474). Several matches in the deciding tier, or none at
    all, raise :class:`~flashtorch.errors.ClassNameError` (a ``KeyError``) that lists the
    candidates with their indices, or the closest names.

    Example:
        >>> index = ImageNetIndex()
        >>> index["great grey owl"]
        24
        >>> index["Great_Grey-Owl"]
        24
        >>> index[24]
        'great grey owl'
        >>> index.search("grey owl")
        [(24, 'great grey owl')]
        >>> index["owl"]  # whole word wins over 'bowl'
        24
        >>> index["dalmatian dog"]
        251
        >>> len(index), "espresso" in index, 967 in index
        (1000, True, True)
        >>> index.get("not a class") is None
        True
    """

    #: all instances hold the same immutable data: equal (``Mapping``) and hashed alike.
    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} classes)"

    # -- the data --------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The 1000 class names in index order (a new list each time)."""
        return list(_read_names()[0])

    def __len__(self) -> int:
        return len(_read_names()[0])

    def __iter__(self) -> Iterator[str]:
        return iter(_read_names()[0])

    def keys(self) -> KeysView[str]:
        """The 1000 class names, in index order."""
        return _as_dict().keys()

    def values(self) -> ValuesView[int]:
        """The indices ``0..999``."""
        return _as_dict().values()

    def items(self) -> ItemsView[str, int]:
        """``(name, index)`` pairs in index order."""
        return _as_dict().items()

    def __contains__(self, key: object) -> bool:
        """True for a valid class index, or a string that is a class name after normalisation.

        Partial names (``"owl"``) are not members even when ``index["owl"]`` resolves them
        (FlashTorch 0.1.3 counted any substring of a name as a member).
        """
        if isinstance(key, str):
            return _normalize(key) in _read_names()[1]
        try:
            value = self._as_index(key)
        except ClassNameError:
            return False
        return 0 <= value < len(self)

    # -- lookup ----------------------------------------------------------------------------

    def search(self, query: str) -> list[tuple[int, str]]:
        """Every class whose name contains ``query``, best matches first.

        Ordered by tier (exact name, whole words, substring), then by index. An empty query
        returns all classes.

        Args:
            query: part of a class name; case, ``_``, ``-`` and extra spaces are ignored.

        Returns:
            ``[(index, name), ...]``; empty when nothing matches.
        """
        if not isinstance(query, str):
            raise ClassNameError(f"search query must be a string, got {type(query).__name__}")
        exact, words, substring = self._tiers(_normalize(query))
        return exact + words + substring

    def __getitem__(self, key: str | int) -> int | str:
        """Return the index of a class name, or the name of a class index.

        Raises:
            ClassNameError: the name matches no class (the message lists the closest names) or
                several (the message lists them with their indices), or the index is out of
                ``0..999``, or the key is neither a string nor an integer.
        """
        if isinstance(key, str):
            return self._index_of(key)
        value = self._as_index(key)
        names = _read_names()[0]
        if not 0 <= value < len(names):
            raise ClassNameError(
                f"ImageNet class index {value} is out of range; valid indices are "
                f"0..{len(names) - 1}"
            )
        return names[value]

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _as_index(key: Any) -> int:
        if isinstance(key, bool):
            raise ClassNameError(f"expected a class name or index, got the boolean {key}")
        try:
            return operator.index(key)  # int, numpy integer, 0-d integer tensor
        except TypeError:
            raise ClassNameError(
                "expected a class name (str) or a class index (int), got "
                f"{type(key).__name__}: {key!r}"
            ) from None

    @staticmethod
    def _tiers(
        query: str,
    ) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[tuple[int, str]]]:
        names, normalized = _read_names()
        padded_query = f" {query} "
        exact: list[tuple[int, str]] = []
        words: list[tuple[int, str]] = []
        substring: list[tuple[int, str]] = []
        for i, (name, norm) in enumerate(zip(names, normalized)):
            if norm == query:
                exact.append((i, name))
            elif padded_query in f" {norm} ":
                words.append((i, name))
            elif query in norm:
                substring.append((i, name))
        return exact, words, substring

    @staticmethod
    def _by_words(query: str) -> list[tuple[int, str]]:
        """Tier 4: the classes a query of several words names word by word."""
        words = frozenset(query.split())
        if len(words) < 2:
            return []
        names = _read_names()[0]
        sets = _word_sets()
        covering = [(i, names[i]) for i, (_, extended) in enumerate(sets) if words <= extended]
        if covering:
            return covering
        inside = [(i, len(own)) for i, (own, _) in enumerate(sets) if own <= words]
        if not inside:
            return []
        longest = max(n for _, n in inside)
        return [(i, names[i]) for i, n in inside if n == longest]

    def _index_of(self, name: str) -> int:
        query = _normalize(name)
        if not query:
            raise ClassNameError(
                f"empty class name {name!r}; give an ImageNet class name such as 'tabby' "
                "(`flashtorch classes QUERY` lists names)"
            )
        tiers = self._tiers(query)
        if len(tiers[0]) > 1:  # 'Cardigan' (dog, 264) vs 'cardigan' (sweater, 474): use case
            same_case = [(i, n) for i, n in tiers[0] if _spaced(n) == _spaced(name)]
            if len(same_case) == 1:
                return same_case[0][0]
        for tier, how in zip(tiers, ("exactly", "as whole words", "as a substring")):
            if len(tier) == 1:
                return tier[0][0]
            if len(tier) > 1:
                raise ClassNameError(
                    f"class name {name!r} is ambiguous: it matches {len(tier)} ImageNet classes "
                    f"{how}: {_format(tier)}. Use the full name or the index"
                )
        found = self._by_words(query)
        if len(found) == 1:
            return found[0][0]
        if len(found) > 1:
            raise ClassNameError(
                f"class name {name!r} is ambiguous: its words match {len(found)} ImageNet "
                f"classes: {_format(found)}. Use the full name or the index"
            )
        names, normalized = _read_names()
        close = difflib.get_close_matches(query, normalized, n=5, cutoff=0.6)
        if close:
            found = [(normalized.index(c), names[normalized.index(c)]) for c in close]
            hint = f"; closest names: {_format(found)}"
        else:
            hint = "; search with ImageNetIndex().search(...) or `flashtorch classes QUERY`"
        raise ClassNameError(f"no ImageNet class matches {name!r}{hint}")


__all__ = ["ImageNetIndex"]

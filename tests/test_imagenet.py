from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch

from flashtorch.errors import ClassNameError, TargetError
from flashtorch.utils.imagenet import ImageNetIndex


@pytest.fixture(scope="module")
def index() -> ImageNetIndex:
    return ImageNetIndex()


def test_package_data_matches_torchvision_order():
    torchvision_meta = pytest.importorskip("torchvision.models._meta")
    text = resources.files("flashtorch.utils").joinpath("imagenet_classes.txt").read_text("utf-8")
    lines = text.splitlines()
    assert lines == list(torchvision_meta._IMAGENET_CATEGORIES)
    assert len(lines) == 1000


def test_size_iteration_and_names(index):
    assert len(index) == 1000
    names = list(index)
    assert names == index.names
    assert names[0] == "tench" and names[999] == "toilet tissue"
    index.names.append("not a class")  # a copy: the index itself cannot be changed
    assert len(index.names) == 1000


def test_talk_example_and_reverse_lookup(index):
    assert index["great grey owl"] == 24
    assert index[24] == "great grey owl"


@pytest.mark.parametrize(
    "query",
    ["Great Grey Owl", "great_grey_owl", "  great   grey owl ", "GREAT-GREY-OWL", "great grey_owl"],
)
def test_case_spaces_underscores_hyphens_ignored(index, query):
    assert index[query] == 24


def test_hyphen_in_a_real_name_matches_space(index):
    assert index["go kart"] == index["go-kart"] == 573
    assert index["jack o' lantern"] == 607


def test_round_trip_for_every_class(index):
    # every name resolves to its own index (exact tier wins over the fuzzier tiers)
    for i, name in enumerate(index.names):
        assert index[name] == i


def test_exact_match_beats_whole_word_and_substring(index):
    assert index["espresso"] == 967  # also a word of 'espresso maker' (550)
    assert index["crane"] == 517  # also a word of 'crane bird' (134)


def test_case_decides_only_between_names_equal_up_to_case(index):
    assert index["Cardigan"] == 264  # Welsh corgi
    assert index["cardigan"] == 474  # sweater
    with pytest.raises(ClassNameError, match=r"'Cardigan' \(264\), 'cardigan' \(474\)"):
        index["CARDIGAN"]
    assert index["great GREY owl"] == 24  # otherwise case does not matter


def test_whole_word_match_beats_substring(index):
    # 'owl' is a whole word only of 'great grey owl'; 'bowl', 'howler monkey' contain it
    assert index["owl"] == 24
    assert index["grey owl"] == 24


def test_substring_match(index):
    assert index["guacam"] == 924
    assert index["hippopot"] == index["hippopotamus"]


def test_several_matches_list_names_and_indices(index):
    with pytest.raises(ClassNameError) as info:
        index["cat"]
    message = str(info.value)
    for name, i in [("tiger cat", 282), ("Persian cat", 283), ("Egyptian cat", 285)]:
        assert f"'{name}' ({i})" in message
    assert "ambiguous" in message and "whole words" in message
    with pytest.raises(ClassNameError, match=r"'espresso maker' \(550\).*'espresso' \(967\)"):
        index["espres"]


def test_no_match_suggests_closest_names(index):
    with pytest.raises(ClassNameError, match=r"closest names: 'tabby' \(281\)"):
        index["tabbi"]  # ('tabby catt' is now 'tabby' plus a word: 281)
    with pytest.raises(KeyError):  # ClassNameError is a KeyError...
        index["zzzz qqqq"]
    with pytest.raises(TargetError):  # ...and a TargetError
        index["zzzz qqqq"]


def test_error_message_is_not_quoted_by_keyerror(index):
    with pytest.raises(ClassNameError) as info:
        index["zzzz qqqq"]
    assert str(info.value).startswith("no ImageNet class matches 'zzzz qqqq'")


def test_empty_name_rejected(index):
    with pytest.raises(ClassNameError, match="empty class name"):
        index["  _ "]


@pytest.mark.parametrize("bad", [1000, -1, 10**6])
def test_index_out_of_range(index, bad):
    with pytest.raises(ClassNameError, match=rf"index {bad} is out of range; valid .*0\.\.999"):
        index[bad]


def test_integer_like_keys(index):
    assert index[np.int64(24)] == "great grey owl"
    assert index[torch.tensor(24)] == "great grey owl"
    assert index[999] == "toilet tissue"


@pytest.mark.parametrize("bad", [2.0, None, True, [24]])
def test_wrong_key_types(index, bad):
    with pytest.raises(ClassNameError, match="expected a class name"):
        index[bad]


def test_contains_names_and_ints(index):
    assert "great grey owl" in index
    assert "Great_Grey-Owl" in index
    assert "owl" not in index  # a partial name resolves with [] but is not a class name
    assert 0 in index and 999 in index
    assert 1000 not in index and -1 not in index
    assert 2.5 not in index and None not in index


def test_search_orders_by_tier_then_index(index):
    assert index.search("owl") == [
        (24, "great grey owl"),  # whole word
        (379, "howler monkey"),  # substrings, by index
        (659, "mixing bowl"),
        (809, "soup bowl"),
    ]
    assert index.search("crane") == [(517, "crane"), (134, "crane bird")]
    assert index.search("zzzz") == []
    assert len(index.search("")) == 1000


def test_search_results_are_consistent_with_lookup(index):
    results = index.search("terrier")
    assert len(results) > 10
    assert all("terrier" in name.lower() for _, name in results)
    assert all(index[i] == name for i, name in results)
    with pytest.raises(ClassNameError):
        index.search(24)  # type: ignore[arg-type]


def test_instances_are_independent_and_cheap():
    a, b = ImageNetIndex(), ImageNetIndex()
    a.names.clear()
    assert len(b) == 1000 and b[24] == "great grey owl"
    assert repr(a) == "ImageNetIndex(1000 classes)"


# -- FlashTorch 0.1.3 compatibility (issue 17) --------------------------------------------------


def test_is_a_mapping_of_names_to_indices(index):
    from collections.abc import ItemsView, KeysView, Mapping

    assert isinstance(index, Mapping)
    assert len(index.keys()) == len(index.items()) == len(index.values()) == 1000
    assert list(index.keys()) == index.names
    assert list(index.values()) == list(range(1000))
    assert dict(index)["great grey owl"] == 24 and dict(index.items())["tabby"] == 281
    assert index.get("not a class at all") is None and index.get("jay") == 17
    assert index == ImageNetIndex() and hash(index) == hash(ImageNetIndex())
    assert isinstance(index.keys(), KeysView) and isinstance(index.items(), ItemsView)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("dalmatian dog", 251),  # 0.1.3's own test: a name plus a word
        ("tabby cat", 281),
        ("king penguin bird", 145),
        ("owl great grey", 24),  # every word of one name, in another order
        # 0.1.3's keys for the names that differ only in case or by a suffix
        ("crane wading bird", 134),
        ("crane lifting device", 517),
        ("cardigan corgi", 264),
        ("cardigan clothing", 474),
        ("maillot tights", 638),
        ("maillot swimsuit", 639),
    ],
)
def test_multi_word_names_resolve_word_by_word(index, query, expected):
    assert index[query] == expected


def test_multi_word_tier_still_refuses_ambiguity(index):
    # two names of one word each, both in the query
    with pytest.raises(ClassNameError, match=r"ambiguous: its words match 2.*'tabby' \(281\)"):
        index["tabby jay"]
    with pytest.raises(ClassNameError, match="no ImageNet class matches"):
        index["purple quasar"]

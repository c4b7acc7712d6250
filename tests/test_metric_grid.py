"""Which metric each Train-tab panel shows (studio.views.train.metric_grid): the domain's defaults first,
then every other logged metric in a fixed order, filtered by the search, capped with a line saying how many
more matched."""

from __future__ import annotations

import pytest

from studio.views.train.metric_grid import (
    PANEL_SLOTS,
    compile_search,
    default_metrics,
    order_metrics,
    plan_panels,
)

# What a fragments smoke run logs (a real run's 13 metrics, in the store's order).
FRAGMENT_LOGGED = [
    "train/loss",
    "sys/cpu_percent",
    "sys/memory_mb",
    "val/accuracy",
    "val/accuracy_corrupted",
    "val/identity_accuracy",
    "val/identity_accuracy_corrupted",
    "val/ber",
    "val/identity_ber",
    "val/fixed_fraction",
    "val/broken_fraction",
    "val/loss",
    "val/collapsing",
]
FRAGMENT_ORDER = [
    "train/loss",  # the fragments defaults, in their order
    "val/loss",
    "val/accuracy_corrupted",
    "val/accuracy",
    "val/ber",  # then the other val/ metrics by name
    "val/broken_fraction",
    "val/collapsing",
    "val/fixed_fraction",
    "val/identity_accuracy",
    "val/identity_accuracy_corrupted",
    "val/identity_ber",
    "sys/cpu_percent",  # resource use last
    "sys/memory_mb",
]
SAR_LOGGED = ["train/loss", "val/psnr", "val/ssim", "val/loss", "sys/cpu_percent", "train/lr"]


def test_defaults_come_first_then_train_val_test_other_splits_and_sys_last():
    assert order_metrics(FRAGMENT_LOGGED, default_metrics(["fragments"])) == FRAGMENT_ORDER
    logged = ["sys/gpu_percent", "eval/x", "test/psnr", "val/a", "train/lr", "train/loss"]
    assert order_metrics(logged, ["val/psnr"]) == [
        "val/psnr",  # a default not logged yet keeps its panel (a fresh run logs val/ after an epoch)
        "train/loss",
        "train/lr",
        "val/a",
        "test/psnr",
        "eval/x",
        "sys/gpu_percent",
    ]


def test_defaults_of_every_plotted_domain_in_order_without_repeats():
    assert default_metrics(["sar", "fragments", "sar"]) == [
        "train/loss",
        "val/psnr",
        "val/ssim",
        "val/epi",
        "val/loss",
        "val/accuracy_corrupted",
        "val/accuracy",
    ]
    assert default_metrics([]) == ["train/loss", "val/loss"]  # no run plotted, or an unknown domain
    assert default_metrics([None, "other"]) == ["train/loss", "val/loss"]


def test_fragment_runs_get_no_panel_of_a_sar_metric():
    plan = plan_panels(FRAGMENT_LOGGED, ["fragments"], "", 4)
    assert plan.metrics == ("train/loss", "val/loss", "val/accuracy_corrupted", "val/accuracy")
    assert not any("psnr" in m for m in plan_panels(FRAGMENT_LOGGED, ["fragments"], "", 12).metrics)


def test_the_cap_counts_what_it_leaves_out():
    plan = plan_panels(FRAGMENT_LOGGED, ["fragments"], "", 12)
    assert plan.metrics == tuple(FRAGMENT_ORDER[:12]) and plan.matched == 13 and plan.more == 1
    assert plan.note == "13 metrics match · showing the first 12; 1 more match — refine the search"
    small = plan_panels(FRAGMENT_LOGGED, ["fragments"], "", 6)
    assert small.metrics == tuple(FRAGMENT_ORDER[:6]) and small.more == 7
    assert small.note == (
        "13 metrics match · showing the first 6; 7 more match — refine the search or show more panels"
    )
    assert plan_panels(SAR_LOGGED, ["sar"], "", 12).note == "7 metrics match"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("^sys/", ("sys/cpu_percent", "sys/memory_mb")),
        ("identity", ("val/identity_accuracy", "val/identity_accuracy_corrupted", "val/identity_ber")),
        ("LOSS", ("train/loss", "val/loss")),  # case does not matter
        ("val/(ber|loss)$", ("val/loss", "val/ber")),  # a regular expression; the defaults' order stays
        ("  accuracy_corr  ", ("val/accuracy_corrupted", "val/identity_accuracy_corrupted")),  # trimmed
    ],
)
def test_search_is_a_case_blind_regular_expression(query, expected):
    plan = plan_panels(FRAGMENT_LOGGED, ["fragments"], query, 12)
    assert plan.metrics == expected and plan.matched == len(expected)


def test_a_search_that_is_not_a_regular_expression_matches_as_text():
    pattern, note = compile_search("val/(")
    assert pattern.search("val/(x") and not pattern.search("val/x")
    assert note == "'val/(' is not a regular expression (missing )): matched as plain text"
    plan = plan_panels(["val/(x)", "val/x"], ["sar"], "val/(", 12)
    assert plan.metrics == ("val/(x)",)
    assert plan.note.endswith("matched as plain text · 1 metric match")
    assert compile_search("  ") == (None, "")


def test_nothing_matches_says_so_and_draws_no_panel():
    plan = plan_panels(SAR_LOGGED, ["sar"], "accuracy", 6)
    assert plan.metrics == () and plan.matched == 0
    assert plan.note == "no logged metric matches 'accuracy'"


def test_a_search_that_backtracks_forever_in_re_is_answered():
    # Python's `re` backtracks over "identity_accuracy_corrupted" for minutes on this pattern, holding the
    # GIL (the whole studio would stop); the search answers at once that nothing matches.
    plan = plan_panels(FRAGMENT_LOGGED, ["fragments"], r"(\w+_?)+!", 12)
    assert plan.metrics == () and plan.note == r"no logged metric matches '(\w+_?)+!'"


def test_a_search_over_its_time_is_matched_as_text(monkeypatch):
    import studio.views.train.metric_grid as grid

    class Slow:
        def search(self, name, timeout):
            raise TimeoutError("regex timed out")

    monkeypatch.setattr(grid, "compile_search", lambda query: (Slow(), ""))
    found, note = grid.search_metrics(["val/a+b", "val/ab"], "a+b")
    assert found == ["val/a+b"]  # the characters themselves, "+" included
    assert note == "'a+b' took too long as a regular expression: matched as plain text"


@pytest.mark.parametrize("cap", [0, PANEL_SLOTS + 1, 2.5, True, "6"])
def test_a_bad_panel_count_is_refused(cap):
    with pytest.raises(ValueError, match="panel count must be a whole number from 1 to 12"):
        plan_panels(SAR_LOGGED, ["sar"], "", cap)

"""The fine-tuning bench's plan: which recipes run, under which run names, with what they depend on."""
import argparse

from bench.bench_finetune import chosen_recipes, recipes, row, slug


def plan(only=None, quick=False):
    return [r.name for r in chosen_recipes(argparse.Namespace(rates="5e-4,2e-4", warmups="10", quick=quick,
                                                              only=only))]


def test_every_recipe_has_a_run_name_of_its_own():
    names = [slug(r.name) for r in recipes(["5e-4", "2e-4", "1e-4"], ["10", "150"], quick=False)]
    assert len(set(names)) == len(names)
    assert slug("lock image (LiT), lr 2e-3") == "lock-image-lr-2e-3"


def test_only_runs_what_it_names_and_what_that_starts_from():
    assert plan(only="WiSE") == ["lr 2e-3 (from-scratch default)", "WiSE-FT alpha 0.5 of lr 2e-3"]
    assert plan(only="bind|lock text") == ["lock image (LiT), lr 2e-3", "then bind audio again", "lock text"]
    assert plan(quick=True) == ["lr 2e-3 (from-scratch default)", "defaults"]


def test_a_row_shows_each_figure_with_its_change_against_the_checkpoint():
    base = {"target": 93.3, "MNIST": 97.8, "voices": 98.8, "human": 90.0}
    after = {"target": 98.9, "MNIST": 96.8, "voices": 98.8, "human": 100.0}
    assert row("defaults", "(none)", after, base, 83.4) == (
        "| defaults | (none) | 98.9% (+5.6) | 96.8% (-1.0) | 98.8% (+0.0) | 10 of 10 (+1) | 83 s |")

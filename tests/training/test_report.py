"""The results table: every rate with the count it stands on, so a small set reads as small."""
import pytest

from multimodal.training.report import format_results, wilson_interval

RESULTS = {
    "image_zeroshot/accuracy@1": 0.931,
    "image_zeroshot/mean_per_class_recall": 0.93,
    "image_zeroshot/num_samples": 1000,
    "audio_real_zeroshot/accuracy@1": 0.4,
    "audio_real_zeroshot/num_samples": 10,
    "emergent/audio_to_image/recall@1": 0.9,
    "emergent/audio_to_image/map@10": 0.8771,
    "emergent/audio_to_image/num_queries": 400,
    "pairs/image_to_text/recall@5": 1.0,
    "pairs/image_to_text/num_queries": 6,
    "pairs/num_samples": 6,
}


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81 of 263 -> 0.2553-0.3662; 15 of 148 -> 0.0624-0.1605.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # sound at 0, where the normal one is 0-0
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    with pytest.raises(ValueError, match="0 <= successes <= total"):
        wilson_interval(11, 10)


def test_rates_show_their_counts_and_intervals():
    lines = format_results(RESULTS).splitlines()
    assert lines[0].split() == ["metric", "value", "of", "95%", "interval"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["image_zeroshot/accuracy@1"] == ["93.1%", "931", "of", "1,000", "91.4-94.5%"]
    assert rows["image_zeroshot/mean_per_class_recall"] == ["93.0%", "1,000", "samples"]
    assert rows["audio_real_zeroshot/accuracy@1"] == ["40.0%", "4", "of", "10", "16.8-68.7%"]
    assert rows["emergent/audio_to_image/recall@1"] == ["90.0%", "360", "of", "400", "queries", "86.7-92.6%"]
    assert rows["emergent/audio_to_image/map@10"] == ["87.7%", "400", "queries"]
    # The nearest count wins: queries of the direction, not the pairs' sample count.
    assert rows["pairs/image_to_text/recall@5"] == ["100.0%", "6", "of", "6", "queries", "61.0-100.0%"]
    # Counts shown beside their metrics get no row; one no metric uses keeps its own.
    assert "image_zeroshot/num_samples" not in rows and "emergent/audio_to_image/num_queries" not in rows
    assert rows["pairs/num_samples"] == ["6"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned


def test_results_without_counts_keep_two_columns():
    assert format_results({}) == "(no evaluation results)"
    assert format_results({"eval/accuracy@1": 0.5, "loss": 2.25}).splitlines() == [
        "metric           value", "---------------  -----", "eval/accuracy@1  50.0%", "loss              2.25"]

"""Mixed sources under data parallelism: every rank draws the same source for the same step.

In distributed training the ranks' batches of one step are gathered into one
contrastive batch, so they must hold the same modalities.
"""
import itertools

from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.source_spec import SourceSpec
from tests.data.pipeline.test_pipeline import AUDIO, IMAGE, tokenize, write_clap, write_img2dataset


def test_ranks_draw_the_same_source_sequence(tmp_path):
    write_img2dataset(tmp_path, num_shards=2, per_shard=6)
    write_clap(tmp_path, num_shards=2, per_shard=6)
    sources = [
        SourceSpec(shards=str(tmp_path / "img-{00000..00001}.tar"), modalities=["image", "text"], name="images"),
        SourceSpec(shards=str(tmp_path / "aud-{00000..00001}.tar"), modalities=["audio", "text"], name="speech"),
    ]
    orders = []
    for rank in range(2):
        loader = make_loader(sources, batch_size=2, train=True, tokenize=tokenize, preprocess={"image": IMAGE, "audio": AUDIO}, seed=3, rank=rank, world_size=2, num_workers=0)
        orders.append([batch["__source__"] for batch in itertools.islice(loader, 12)])
    assert orders[0] == orders[1]
    assert set(orders[0]) == {"images", "speech"}

"""Regenerates tests/data/imagenet2012/5.1.0/ (tfds metadata for the imagenet2012 mock test).

The split sizes, byte counts and shard counts are those of tfds's published metadata for
imagenet2012 5.1.0 (tensorflow/datasets: testing/metadata/imagenet2012/5.1.0/dataset_info.json):
train 1,281,167 examples in 1024 shards, validation 50,000 in 64, test 100,000 in 128; shard
lengths follow tfds's rounding of i·N/S. Features and labels come from the builder's code.

Run: .venv/bin/python tests/data/make_imagenet2012_metadata.py
"""

import itertools
import os
import tempfile

import tensorflow_datasets as tfds

from vdm_jax.data.imagenet import Imagenet2012

# (name, examples, shards, bytes) from the published dataset_info.json
SPLITS = [
    ("train", 1281167, 1024, 146999114192),
    ("validation", 50000, 64, 6711099535),
    ("test", 100000, 128, 13619139599),
]


def shard_lengths(num_examples: int, num_shards: int) -> list[int]:
    bounds = [round(i * num_examples / num_shards) for i in range(num_shards + 1)]
    return [b - a for a, b in itertools.pairwise(bounds)]


def main() -> None:
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet2012", "5.1.0")
    with tempfile.TemporaryDirectory() as tmp:
        builder = Imagenet2012(data_dir=tmp, file_format="array_record")
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path, dataset_name="imagenet2012", filetype_suffix="array_record"
        )
        infos = [
            tfds.core.SplitInfo(
                name=name,
                shard_lengths=shard_lengths(n, shards),
                num_bytes=num_bytes,
                filename_template=template.replace(split=name),
            )
            for name, n, shards, num_bytes in SPLITS
        ]
        builder.info.set_splits(tfds.core.SplitDict(infos))
        os.makedirs(out, exist_ok=True)
        builder.info.write_to_directory(out)
    print(f"wrote {sorted(os.listdir(out))} to {out}")


if __name__ == "__main__":
    main()

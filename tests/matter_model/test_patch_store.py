"""The patch store: atomic shards under kill -9, idempotent reruns, band checks, band names,
integers that decode to the values written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from matter_model import atomic_io
from matter_model.patch_store import (
    CODECS,
    ENCODINGS,
    ROLES,
    Encoding,
    PatchStoreError,
    StoreInfo,
    TripletDataset,
    manifest_digest,
    read_info,
    read_patches,
    read_provenance,
    record_manifest,
    shard_ids,
    write_shard,
)

INFO = StoreInfo(bands=("B02", "B03", "B04"), patch_size=8)
CAPTURE = dict(capture_output=True, text=True, check=True)


def _shard(n: int, value: float = 0.0) -> dict:
    rng = np.random.default_rng(int(value))
    crops = [rng.random((n, 3, 8, 8), dtype=np.float32) + value for _ in range(3)]
    return dict(
        anchor=crops[0],
        positive=crops[1],
        negative=crops[2],
        patches=pd.DataFrame({"region": ["r"] * n, "anchor_date": ["2024-05-01"] * n}),
    )


def test_round_trip_by_band_name(tmp_path) -> None:
    data = _shard(5)
    write_shard(tmp_path, "r__2024-04-01", INFO, **data)
    dataset = TripletDataset(tmp_path, bands=["B04", "B02"])
    assert len(dataset) == 5
    sample = dataset[2]
    np.testing.assert_array_equal(sample["anchor"].numpy(), data["anchor"][2][[2, 0]])
    np.testing.assert_array_equal(sample["negative"].numpy(), data["negative"][2][[2, 0]])


def test_rewriting_a_shard_replaces_it_whole(tmp_path) -> None:
    write_shard(tmp_path, "a", INFO, **_shard(5, 0.0))
    write_shard(tmp_path, "a", INFO, **_shard(3, 1.0))
    assert shard_ids(tmp_path) == ["a"]
    assert len(read_patches(tmp_path)) == 3
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["a"]  # no temp or trash left


def test_hidden_partial_shards_are_invisible(tmp_path) -> None:
    write_shard(tmp_path, "a", INFO, **_shard(2))
    (tmp_path / "shards" / ".tmp-b-123").mkdir()  # what a killed writer leaves
    assert shard_ids(tmp_path) == ["a"]
    assert len(TripletDataset(tmp_path)) == 2


def test_bad_input_is_named(tmp_path) -> None:
    with pytest.raises(PatchStoreError, match="no patch store"):
        TripletDataset(tmp_path)
    write_shard(tmp_path, "a", INFO, **_shard(2))
    with pytest.raises(PatchStoreError, match=r"missing \['B08'\]"):
        TripletDataset(tmp_path, bands=["B02", "B08"])
    with pytest.raises(PatchStoreError, match="re-tile every partition"):
        write_shard(
            tmp_path,
            "b",
            StoreInfo(("B02",), 8),
            **{
                **_shard(2),
                "anchor": np.zeros((2, 1, 8, 8), np.float32),
                "positive": np.zeros((2, 1, 8, 8), np.float32),
                "negative": np.zeros((2, 1, 8, 8), np.float32),
            },
        )
    bad = _shard(2)
    bad["positive"][0, 0, 0, 0] = np.nan
    with pytest.raises(PatchStoreError, match="NaN"):
        write_shard(tmp_path, "c", INFO, **bad)


KILL_SHARDS = 6
KILL_INFO = StoreInfo(bands=("B02", "B03", "B04", "B08"), patch_size=32)
# The writer the kill test runs in a subprocess: every shard of the store, once or forever.
WRITER = """
import sys
from tests.matter_model.test_patch_store import write_kill_store
print("ready", flush=True)
write_kill_store(sys.argv[1], forever=sys.argv[2] == "forever")
"""


def kill_shard(i: int) -> dict:
    """The deterministic content of shard ``i`` of the kill test (large enough to take a while)."""
    rng = np.random.default_rng(1000 + i)
    n = 64
    crops = [rng.random((n, 4, 32, 32), dtype=np.float32) for _ in range(3)]
    return dict(
        anchor=crops[0],
        positive=crops[1],
        negative=crops[2],
        patches=pd.DataFrame({"region": [f"r{i}"] * n, "window_row": np.arange(n)}),
    )


def write_kill_store(root: str, forever: bool = False) -> None:
    """Write every shard of the kill test's store; with ``forever``, rewrite them in a loop."""
    while True:
        for i in range(KILL_SHARDS):
            write_shard(root, f"s{i:02d}", KILL_INFO, **kill_shard(i))
        if not forever:
            return


def _files(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_kill_9_leaves_only_complete_shards_and_a_rerun_completes_the_store(tmp_path) -> None:
    """SIGKILL a writer at random moments; every visible shard is whole, and a rerun rebuilds
    the store byte for byte as an uninterrupted run writes it."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    write_kill_store(str(reference))
    rng = np.random.default_rng(7)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    leftovers = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(killed), "forever"],
            stdout=subprocess.PIPE,
            cwd=repo,
            env=env,
        )
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        visible = shard_ids(killed)
        leftovers += len(list((killed / "shards").glob(".*")))
        assert set(visible) <= {f"s{i:02d}" for i in range(KILL_SHARDS)}
        for shard in visible:
            expected = kill_shard(int(shard[1:]))
            group = zarr.open_group(killed / "shards" / shard, mode="r")
            for role in ROLES:
                np.testing.assert_array_equal(group[role][:], expected[role], err_msg=shard)
            pd.testing.assert_frame_equal(
                pd.read_csv(killed / "shards" / shard / "patches.csv"), expected["patches"]
            )
        if visible:
            assert len(TripletDataset(killed)) == 64 * len(visible)
    assert leftovers > 0  # at least one kill landed in the middle of a shard write
    write_kill_store(str(killed))  # the rerun
    assert _files(killed) == _files(reference)
    assert not list((killed / "shards").glob(".*"))  # the dead writers' leftovers are gone


def test_a_dead_writers_leftovers_are_cleaned_and_a_live_ones_kept(tmp_path) -> None:
    write_shard(tmp_path, "a", INFO, **_shard(2))
    shards = tmp_path / "shards"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **CAPTURE)
    host = atomic_io._HOST
    (shards / f".tmp.{host}.{int(dead.stdout)}.0f.b").mkdir()
    (shards / f".trash.{host}.{int(dead.stdout)}.1f.c").mkdir()  # a swap killed midway
    live = shards / f".tmp.{host}.{os.getpid()}.2f.d"
    live.mkdir()
    assert atomic_io.clean_stale(shards) == [
        f".tmp.{host}.{int(dead.stdout)}.0f.b",
        f".trash.{host}.{int(dead.stdout)}.1f.c",
    ]
    assert sorted(p.name for p in shards.iterdir()) == [live.name, "a", "c"]


def test_the_normalisation_travels_with_the_store_and_is_never_mixed(tmp_path) -> None:
    standardised = StoreInfo(INFO.bands, INFO.patch_size, normalisation="scene-standardised")
    write_shard(tmp_path / "std", "a", standardised, **_shard(2))
    assert read_info(tmp_path / "std").normalisation == "scene-standardised"
    with pytest.raises(PatchStoreError, match="normalisation 'scene-standardised'"):
        write_shard(tmp_path / "std", "b", INFO, **_shard(2))
    with pytest.raises(PatchStoreError, match="normalisation must be one of"):
        StoreInfo(INFO.bands, INFO.patch_size, normalisation="dn")


def _rewrite_store_json(root: Path, **changes: object) -> None:
    """Edit ``root``'s store.json as an older version wrote it (None drops a key)."""
    meta = json.loads((root / "store.json").read_text())
    meta.update(changes)
    meta = {key: value for key, value in meta.items() if value is not None}
    (root / "store.json").write_text(json.dumps(meta))


def test_stores_of_older_versions_are_read_and_grown_as_they_are(tmp_path) -> None:
    standardised = StoreInfo(INFO.bands, INFO.patch_size, normalisation="scene-standardised")
    write_shard(tmp_path / "v1", "a", standardised, **_shard(2))
    _rewrite_store_json(tmp_path / "v1", version=1, normalisation=None, values="scene-standardised")
    assert read_info(tmp_path / "v1").normalisation == "scene-standardised"
    write_shard(tmp_path / "v1", "b", standardised, **_shard(2))
    assert json.loads((tmp_path / "v1" / "store.json").read_text())["version"] == 1
    # a store.json written before either key existed holds reflectance
    write_shard(tmp_path / "old", "a", INFO, **_shard(2))
    _rewrite_store_json(tmp_path / "old", version=1, normalisation=None)
    assert read_info(tmp_path / "old").normalisation == "reflectance"
    _rewrite_store_json(tmp_path / "old", version=3)
    with pytest.raises(PatchStoreError, match="version 1 or 2 .*found matter-patch-store v3"):
        read_info(tmp_path / "old")


def _dn_shard(n: int) -> dict:
    """Reflectance as Sentinel-2 L2A delivers it: whole DN / 10000, BOA offset applied."""
    rng = np.random.default_rng(3)
    crops = [(rng.integers(1, 12000, (n, 3, 8, 8)) - 1000) / 10000 for _ in range(3)]
    data = _shard(n)
    data.update(zip(ROLES, (c.astype(np.float32) for c in crops), strict=True))
    return data


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_reflectance_is_kept_as_its_dn_and_read_back_exactly(tmp_path, codec) -> None:
    info = StoreInfo.encoded(INFO.bands, INFO.patch_size, "reflectance", codec=codec)
    data = _dn_shard(4)
    write_shard(tmp_path, "a", info, **data)
    assert zarr.open_group(tmp_path / "shards" / "a", mode="r")["anchor"].dtype == np.uint16
    assert read_info(tmp_path) == info
    dataset = TripletDataset(tmp_path)
    for i in range(4):
        for role in ROLES:
            np.testing.assert_array_equal(dataset[i][role].numpy(), data[role][i])


def test_a_patch_of_fill_values_is_written_and_read_back(tmp_path) -> None:
    # Shards skip zarr's per-chunk "is it all fill value" check: such a patch is written whole.
    info = StoreInfo.encoded(INFO.bands, INFO.patch_size, "reflectance")
    data = {role: info.encoding.encode(c) for role, c in _dn_shard(2).items() if role in ROLES}
    data["anchor"][1] = 0
    write_shard(tmp_path, "a", info, **data, patches=_shard(2)["patches"])
    read = TripletDataset(tmp_path)[1]["anchor"].numpy()
    np.testing.assert_array_equal(read, info.encoding.decode(data["anchor"][1]))


def test_standardised_values_are_quantised_and_saturate(tmp_path) -> None:
    info = StoreInfo.encoded(INFO.bands, INFO.patch_size, "scene-standardised")
    data = _shard(3)
    for role in ROLES:
        data[role] = (data[role] - 0.5) * 20
    data["anchor"][0, 0, 0, 0] = 500.0  # a cloud over a dark band
    write_shard(tmp_path, "a", info, **data)
    read = TripletDataset(tmp_path)[0]
    step = info.scale
    expected = data["negative"][0]
    assert np.abs(read["negative"].numpy() - expected).max() <= step / 2
    assert read["anchor"][0, 0, 0].item() == pytest.approx(Encoding("int16", step).limits()[1])


def test_a_reflectance_the_dn_cannot_hold_is_refused(tmp_path) -> None:
    info = StoreInfo.encoded(INFO.bands, INFO.patch_size, "reflectance")
    data = _shard(2)
    data["positive"] = data["positive"] - 0.5
    with pytest.raises(
        PatchStoreError, match=r"positive spans \[-0.49\d*, .*outside \[-0.1, 6.454\]"
    ):
        write_shard(tmp_path, "a", info, **data)


def test_a_store_keeps_the_encoding_it_was_started_with(tmp_path) -> None:
    write_shard(tmp_path, "a", INFO, **_shard(2))  # float32, as stores were before
    meta = json.loads((tmp_path / "store.json").read_text())
    for key in ("scale", "offset", "codec"):
        del meta[key]
    (tmp_path / "store.json").write_text(json.dumps(meta))
    encoded = StoreInfo.encoded(INFO.bands, INFO.patch_size, "reflectance")
    data = _shard(2)
    write_shard(tmp_path, "b", encoded, **data)
    assert read_info(tmp_path) == INFO
    assert zarr.open_group(tmp_path / "shards" / "b", mode="r")["anchor"].dtype == np.float32
    np.testing.assert_array_equal(TripletDataset(tmp_path)[2]["anchor"].numpy(), data["anchor"][0])


def test_each_normalisation_has_a_default_codec_and_the_shard_uses_it(tmp_path) -> None:
    reflectance = StoreInfo.encoded(INFO.bands, INFO.patch_size, "reflectance")
    standardised = StoreInfo.encoded(INFO.bands, INFO.patch_size, "scene-standardised")
    assert (reflectance.codec, standardised.codec) == ("blosc-lz4-bitshuffle",) * 2
    write_shard(tmp_path, "a", reflectance, **_shard(2))
    assert read_info(tmp_path).codec == "blosc-lz4-bitshuffle"
    (compressor,) = zarr.open_group(tmp_path / "shards" / "a", mode="r")["anchor"].compressors
    assert compressor.cname.value == "lz4" and compressor.shuffle.value == "bitshuffle"


def test_an_unknown_codec_is_refused() -> None:
    with pytest.raises(PatchStoreError, match="unknown codec 'gzip'; choose one of"):
        StoreInfo(INFO.bands, INFO.patch_size, codec="gzip")


def test_provenance_digest_does_not_depend_on_the_order(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_shard(tmp_path / "one", name, INFO, **_shard(2))
        write_shard(tmp_path / "two", name, INFO, **_shard(2))
    record_manifest(tmp_path / "one", "a", "1" * 64, ["i1", "i2"], product_level="L2A")
    one = record_manifest(tmp_path / "one", "b", "2" * 64, ["i2", "i3"], gsd_m=10.0)
    record_manifest(tmp_path / "two", "b", "2" * 64, ["i3", "i2"], gsd_m=10.0)
    two = record_manifest(tmp_path / "two", "a", "1" * 64, ["i1", "i2"], product_level="L2A")
    assert one == two == read_provenance(tmp_path / "one")
    assert one["manifest_digest"] == manifest_digest(["2" * 64, "1" * 64])
    assert one["stac_items"] == 3 and (one["product_level"], one["gsd_m"]) == ("L2A", 10.0)
    assert one["shards"]["a"]["manifest"] == "manifests/a.parquet"
    # a new manifest of a shard replaces its record; a shard gone from the store drops out
    changed = record_manifest(tmp_path / "one", "a", "3" * 64, ["i1"])
    assert changed["manifest_digest"] == manifest_digest(["2" * 64, "3" * 64])
    (tmp_path / "one" / "shards" / "b").rename(tmp_path / "one" / "shards" / ".gone")
    assert record_manifest(tmp_path / "one", "a", "3" * 64, ["i1"])["stac_items"] == 1


def test_a_store_without_provenance_reads_as_before(tmp_path: Path) -> None:
    write_shard(tmp_path, "a", INFO, **_shard(2))
    assert read_provenance(tmp_path) == {}
    assert read_info(tmp_path) == INFO
    assert shard_ids(tmp_path) == ["a"]


def test_stored_integers_pass_through_or_are_re_encoded(tmp_path) -> None:
    info = StoreInfo.encoded(INFO.bands, INFO.patch_size, "reflectance")
    data = _dn_shard(3)
    stored = {role: info.encoding.encode(data[role]) for role in ROLES}
    write_shard(tmp_path / "floats", "a", info, **data)
    write_shard(tmp_path / "integers", "a", info, **(data | stored))
    for role in ROLES:
        written = [
            zarr.open_group(tmp_path / s / "shards" / "a")[role][:] for s in ("floats", "integers")
        ]
        np.testing.assert_array_equal(written[0], written[1])
    # a float32 store (begun before the integer encodings) decodes the integers it is given
    write_shard(tmp_path / "old", "a", INFO, **_shard(2))
    write_shard(tmp_path / "old", "b", info, **(data | stored))
    np.testing.assert_array_equal(
        TripletDataset(tmp_path / "old")[2]["anchor"].numpy(), data["anchor"][0]
    )
    with pytest.raises(PatchStoreError, match="anchor is int32, neither float values nor"):
        write_shard(
            tmp_path / "bad", "a", info, **(data | {"anchor": stored["anchor"].astype(np.int32)})
        )


def test_encoding_matches_the_float64_formula_exactly() -> None:
    rng = np.random.default_rng(7)
    values = (rng.normal(size=(5, 3, 16, 16)) * 40).astype(np.float32)
    standardised = ENCODINGS["scene-standardised"]
    naive = np.rint(np.clip(values.astype(np.float64), -128, 32767 / 256) * 256).astype(np.int16)
    np.testing.assert_array_equal(standardised.encode(values), naive)
    reflectance = ENCODINGS["reflectance"]
    dn = rng.integers(0, 20000, size=(4, 2, 8, 8))
    np.testing.assert_array_equal(reflectance.encode((dn * 1e-4 - 0.1).astype(np.float32)), dn)


def test_an_empty_shard_adds_no_rows_and_changes_no_column(tmp_path) -> None:
    def scored(n: int) -> dict:
        data = _shard(n)
        data["patches"]["score"] = np.linspace(0.1, 0.9, n)  # a float column, as real tables
        return data

    write_shard(tmp_path, "a", INFO, **scored(3))
    alone = read_patches(tmp_path)
    write_shard(tmp_path, "b", INFO, **scored(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas' warning about all-NA columns in a concat
        both = read_patches(tmp_path)
    pd.testing.assert_frame_equal(both, alone)
    assert len(TripletDataset(tmp_path)) == 3

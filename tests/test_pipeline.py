"""grain pipelines: PK training batches (workers, process slices, resume) and evaluation batches."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from absl import flags
from PIL import Image

from tmspr_jax.config import get_base_config
from tmspr_jax.data import pipeline, views
from tmspr_jax.data import sampler as sampler_lib
from tmspr_jax.data.parsing import ParsingTargets

IMG = (32, 16)  # (H, W) of the model input in these tests
GRID = (3, 2)


class FakeSplit:
    """An in-memory split with the ReIDSplit interface: records hold encoded PNG/JPEG bytes made by Pillow."""

    def __init__(self, pids, camids, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pids = np.asarray(pids, np.int64)
        self.camids = np.asarray(camids, np.int64)
        self.file_names = np.array([f"{p:04d}_c{c + 1}_{i:03d}.png" for i, (p, c) in enumerate(zip(pids, camids))])
        self._images = []
        for i in range(len(self.pids)):
            h, w = int(rng.integers(20, 40)), int(rng.integers(10, 20))
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG" if i % 3 else "JPEG")
            self._images.append(buf.getvalue())
        self.num_classes = len(np.unique(self.pids))
        self.num_cameras = len(np.unique(self.camids))

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self._images[i],
            "pid": int(self.pids[i]),
            "camid": int(self.camids[i]),
            "file_name": str(self.file_names[i]),
        }


def _decode(split: FakeSplit, i: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(split[i]["image"])).convert("RGB"))


def _train_split() -> FakeSplit:
    # raw pids (not 0..C-1), 9 identities with 1..6 images, cameras 0..2
    counts = {107: 5, 3: 2, 55: 6, 12: 1, 900: 4, 41: 3, 8: 5, 77: 2, 66: 4}
    pids = np.concatenate([np.full(n, p) for p, n in counts.items()])
    pids = np.random.default_rng(1).permutation(pids)
    return FakeSplit(pids, np.arange(len(pids)) % 3, seed=2)


def _targets(n: int) -> ParsingTargets:
    t = np.arange(n * GRID[0] * GRID[1] * 6, dtype=np.float32).reshape(n, *GRID, 6)
    w = (np.arange(n) % 4 != 0).astype(np.float32)
    return ParsingTargets(targets=t, weights=w, num_missing=int((w == 0).sum()))


def _config(num_workers: int = 0, batch_size: int = 8, k: int = 2):
    c = get_base_config()
    c.seed = 11
    c.img_size = IMG
    c.data.batch_size = batch_size
    c.data.num_instances = k
    c.data.test_batch_size = 5
    c.data.num_workers = num_workers
    c.data.prefetch_buffer = 2
    return c


OCCLUDERS = views.OccluderBank.from_arrays(
    [np.random.default_rng(i).integers(0, 256, (24, 10, 3), dtype=np.uint8) for i in range(3)]
)


def _pipe(split, cfg, **kw) -> pipeline.TrainPipeline:
    return pipeline.TrainPipeline(cfg, split, _targets(len(split)), occluders=OCCLUDERS, **kw)


@pytest.fixture
def parsed_flags():
    """grain's worker processes read absl flags, as under absl.app.run."""
    was = flags.FLAGS.is_parsed()
    flags.FLAGS.mark_as_parsed()
    yield
    if not was:
        flags.FLAGS.unparse_flags()


def _assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_content_and_order():
    split, cfg = _train_split(), _config()
    tg = _targets(len(split))
    epoch = 3
    got = list(pipeline.train_batches(cfg, split, tg, epoch=epoch, occluders=OCCLUDERS))
    labels = np.searchsorted(np.unique(split.pids), split.pids)
    expected_idx = sampler_lib.epoch_batches(labels, 4, 2, seed=cfg.seed, epoch=epoch)
    assert len(got) == len(expected_idx) > 0
    for j, batch in enumerate(got):
        assert batch["views"].shape == (8, 4, *IMG, 3) and batch["views"].dtype == np.float32
        assert batch["parsing"].shape == (8, *GRID, 6) and batch["parsing"].dtype == np.float32
        for k in ("pids", "camids", "index"):
            assert batch[k].dtype == np.int32 and batch[k].shape == (8,)
        idx = batch["index"]
        np.testing.assert_array_equal(idx, expected_idx[j])
        np.testing.assert_array_equal(batch["pids"], labels[idx])
        assert batch["pids"].max() < split.num_classes
        np.testing.assert_array_equal(batch["camids"], split.camids[idx])
        np.testing.assert_array_equal(batch["parsing"], tg.targets[idx])
        np.testing.assert_array_equal(batch["parsing_weight"], tg.weights[idx])
        # view 1 is the deterministic resize of the right record
        for r in range(0, 8, 3):
            based = views.based_view(_decode(split, idx[r]), IMG, cfg.data.mean, cfg.data.std)
            np.testing.assert_array_equal(batch["views"][r, 0], based)
    # per-sample randomness: seeded by (seed, epoch, global position)
    r, j = 5, 1
    rng = pipeline.sample_rng(cfg.seed, epoch, j * 8 + r)
    ref = views.train_views(_decode(split, got[j]["index"][r]), rng, OCCLUDERS, IMG, cfg.data.mean, cfg.data.std, False)
    np.testing.assert_array_equal(got[j]["views"][r], ref)
    # the view streams are not the sampler's stream
    sampler_draw = np.random.default_rng([cfg.seed, epoch, sampler_lib.SAMPLER_STREAM]).random(4)
    assert not np.array_equal(pipeline.sample_rng(cfg.seed, epoch, 0).random(4), sampler_draw)
    # the random views differ between samples and epochs
    assert not np.array_equal(got[0]["views"][0, 1], got[0]["views"][1, 1])
    other = next(pipeline.train_batches(cfg, split, tg, epoch=epoch + 1, occluders=OCCLUDERS))
    assert not np.array_equal(other["index"], got[0]["index"])


def test_worker_processes_give_identical_batches(parsed_flags):
    split = _train_split()
    base = list(_pipe(split, _config(0)).epoch_iterator(0, num_batches=3))
    it = _pipe(split, _config(2)).epoch_iterator(0, num_batches=3)
    try:
        with_workers = list(it)
    finally:
        it.close()
    _assert_batches_equal(base, with_workers)


def test_process_slices_concatenate_to_global_batch():
    split, cfg = _train_split(), _config()
    whole = list(_pipe(split, cfg).epoch_iterator(2))
    parts = [list(_pipe(split, cfg, process_index=i, process_count=2).epoch_iterator(2)) for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for j, g in enumerate(whole):
        assert parts[0][j]["views"].shape[0] == 4
        merged = {k: np.concatenate([parts[0][j][k], parts[1][j][k]]) for k in g}
        _assert_batches_equal([g], [merged])


def test_resume_mid_epoch_gives_the_same_next_batches():
    split, cfg = _train_split(), _config()
    pipe = _pipe(split, cfg)
    it = pipe.epoch_iterator(1)
    first = [next(it), next(it)]
    state = json.loads(json.dumps(pipe.get_state()))
    assert state["epoch"] == 1 and state["batch"] == 2
    rest = list(it)
    assert len(rest) == pipe.num_batches(1) - 2 > 0
    assert pipe.resume_epoch() == 2

    restored = _pipe(split, cfg)
    restored.set_state(state)
    assert restored.resume_epoch() == 1
    _assert_batches_equal(rest, list(restored.epoch_iterator(1)))
    # the train loop's explicit form, and a fresh epoch starts at 0
    _assert_batches_equal(rest[:1], list(_pipe(split, cfg).epoch_iterator(1, start_batch=2, num_batches=3)))
    _assert_batches_equal(first, list(restored.epoch_iterator(1, start_batch=0, num_batches=2)))

    changed = _config(batch_size=6)
    with pytest.raises(ValueError, match="batch_size=8.*config.data.batch_size is now 6"):
        _pipe(split, changed).set_state(state)


def test_run_iterator_gives_each_epochs_batches_through_one_pipeline(parsed_flags):
    split, cfg = _train_split(), _config()
    per_epoch = {e: list(_pipe(split, cfg).epoch_iterator(e)) for e in (1, 2, 3)}
    pipe = _pipe(split, cfg)
    run = pipe.run_iterator(1, 3)
    for e in (1, 2, 3):
        assert run.epoch == e
        got = []
        for batch in run.epoch_batches(e):
            got.append(batch)
            assert (pipe.position.epoch, pipe.position.batch) == (e, len(got))  # what a checkpoint saves
        _assert_batches_equal(per_epoch[e], got)
    assert run.epoch is None and list(run) == []

    # a resumed run: from batch 2 of epoch 2, each epoch capped at 3 batches; worker processes give the same arrays
    cap = lambda e: 3
    expected = per_epoch[2][2:3] + per_epoch[3][:3]
    _assert_batches_equal(expected, list(_pipe(split, cfg).run_iterator(2, 3, start_batch=2, num_batches=cap)))
    with _pipe(split, _config(2)).run_iterator(2, 3, start_batch=2, num_batches=cap) as run:
        _assert_batches_equal(expected, list(run))
    # restored from a saved position, the run starts there by default
    restored = _pipe(split, cfg)
    restored.set_state(dict(pipe.get_state(), epoch=2, batch=2))
    _assert_batches_equal(expected, list(restored.run_iterator(restored.resume_epoch(), 3, num_batches=cap)))
    finished = _pipe(split, cfg)
    finished.set_state(dict(pipe.get_state(), epoch=1, batch=finished.num_batches(1)))  # epoch 1 done: 2 from 0
    _assert_batches_equal(per_epoch[2] + per_epoch[3], list(finished.run_iterator(finished.resume_epoch(), 3)))


def test_run_iterator_refuses_to_skip_an_unfinished_epoch():
    run = _pipe(_train_split(), _config()).run_iterator(0, 1)
    next(run)
    with pytest.raises(ValueError, match="asked for epoch 1 but epoch 0 is not finished"):
        next(run.epoch_batches(1))
    with pytest.raises(ValueError, match="start_batch must be >= 0"):
        _pipe(_train_split(), _config()).run_iterator(0, 1, start_batch=-1)
    with pytest.raises(ValueError, match="out of range"):
        _pipe(_train_split(), _config()).run_iterator(0, 1, num_batches=lambda e: 10_000)


def test_bad_train_settings_are_named():
    split = _train_split()
    if not flags.FLAGS.is_parsed():
        with pytest.raises(RuntimeError, match="num_workers=2 needs parsed absl flags"):
            _pipe(split, _config(2)).epoch_dataset(0)
    with pytest.raises(ValueError, match="batch_size=8 must be divisible by the process count 3"):
        _pipe(split, _config(), process_index=0, process_count=3)
    with pytest.raises(ValueError, match=r"parsing targets have shape \(5, 3, 2, 6\)"):
        pipeline.TrainPipeline(_config(), split, _targets(5), occluders=OCCLUDERS)
    with pytest.raises(ValueError, match="fewer than P=10"):
        _pipe(split, _config(batch_size=20))
    with pytest.raises(ValueError, match="out of range"):
        _pipe(split, _config()).epoch_iterator(0, num_batches=10_000)


def test_occluder_folder_or_source_gives_the_covering_views_occluders(tmp_path):
    split = _train_split()
    cfg = _config()
    assert pipeline._default_occluders(cfg, split).name == "training split"
    assert len(pipeline._default_occluders(cfg, split)) == len(split)
    for i, shape in enumerate([(24, 10), (16, 40), (30, 30)]):
        Image.fromarray(np.full((*shape, 3), 40 * i, np.uint8)).save(tmp_path / f"occ_{i}.png")
    cfg.data.occluder_dir = str(tmp_path)
    bank = pipeline._default_occluders(cfg, split)
    assert len(bank) == 3 and [bank[i].shape[:2] for i in range(3)] == [(24, 10), (16, 40), (30, 30)]

    # A pipeline built without explicit occluders pastes from the folder: its covering views equal those of a
    # pipeline handed the folder's bank, and differ from the training split's (the other views do not change).
    def first_batch(config, **kw):
        return next(iter(pipeline.TrainPipeline(config, split, _targets(len(split)), **kw).epoch_iterator(0)))

    from_config = first_batch(cfg)
    np.testing.assert_array_equal(
        from_config["views"], first_batch(cfg, occluders=views.OccluderBank.from_dir(str(tmp_path)))["views"]
    )
    default = first_batch(_config())
    np.testing.assert_array_equal(from_config["views"][:, [0, 1, 3]], default["views"][:, [0, 1, 3]])
    assert not np.array_equal(from_config["views"][:, 2], default["views"][:, 2])
    cfg.data.occluder_source = "market1501"
    with pytest.raises(ValueError, match="occluder_source='market1501' and config.data.occluder_dir="):
        pipeline._default_occluders(cfg, split)


def test_training_flip_mirrors_all_views_and_the_parsing_target(caplog):
    split, tg = _train_split(), _targets(len(_train_split()))
    plain = list(_pipe(split, _config()).epoch_iterator(0, num_batches=2))
    assert not any(b["flipped"].any() for b in plain)  # flip_prob=0: the reference, no draw taken

    cfg = _config()
    cfg.data.flip_prob = 1.0
    flipped = list(_pipe(split, cfg).epoch_iterator(0, num_batches=2))
    for j, (a, b) in enumerate(zip(plain, flipped)):
        assert b["flipped"].dtype == np.bool_ and b["flipped"].all()
        np.testing.assert_array_equal(a["index"], b["index"])  # the sampler is untouched
        idx = b["index"]
        # the parsing target's patch columns are reversed, row by row and group by group
        np.testing.assert_array_equal(b["parsing"], tg.targets[idx][:, :, ::-1])
        np.testing.assert_array_equal(b["parsing_weight"], tg.weights[idx])
        for r in range(0, 8, 3):
            image = _decode(split, idx[r])
            based = views.based_view(image[:, ::-1], IMG, cfg.data.mean, cfg.data.std)
            np.testing.assert_array_equal(b["views"][r, 0], based)
            # the random views are those of the mirrored image from the sample's stream after the flip draw
            rng = pipeline.sample_rng(cfg.seed, 0, j * 8 + r)
            rng.random()
            ref = views.train_views(image[:, ::-1], rng, OCCLUDERS, IMG, cfg.data.mean, cfg.data.std, False)
            np.testing.assert_array_equal(b["views"][r], ref)

    cfg.data.flip_prob = 0.5
    half = list(_pipe(split, cfg).epoch_iterator(0))
    drawn = np.concatenate([b["flipped"] for b in half])
    assert 0 < drawn.sum() < drawn.size  # both outcomes occur
    _assert_batches_equal(half, list(_pipe(split, cfg).epoch_iterator(0)))  # and are reproducible
    for b in half:
        t = tg.targets[b["index"]]
        expect = np.where(b["flipped"][:, None, None, None], t[:, :, ::-1], t)
        np.testing.assert_array_equal(b["parsing"], expect)

    cfg.data.flip_prob = 1.5
    with pytest.raises(ValueError, match=r"config.data.flip_prob=1.5 must be a probability in \[0, 1\]"):
        _pipe(split, cfg)


def test_flip_misalignment_of_the_patch_grid():
    cfg = get_base_config()  # 256x128, patch 16, stride 11: windows end 2 px before the right edge
    assert pipeline.flip_misalignment(cfg) == 2
    cfg.model.stride = (16, 16)
    assert pipeline.flip_misalignment(cfg) == 0
    cfg.model.stride = (11, 14)
    assert pipeline.flip_misalignment(cfg) == 0
    cfg.model.stride = (11, 11)
    cfg.parsing.method = "reference"  # a resize of the whole image mirrors exactly
    assert pipeline.flip_misalignment(cfg) == 0


def _eval_split() -> FakeSplit:
    return FakeSplit(np.arange(13) * 7 + 100, np.arange(13) % 4, seed=5)


def test_eval_batches_order_and_last_batch():
    split, cfg = _eval_split(), _config()
    batches = list(pipeline.eval_batches(cfg, split))
    assert [len(b["pids"]) for b in batches] == [5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b["pids"] for b in batches]), split.pids)
    np.testing.assert_array_equal(np.concatenate([b["camids"] for b in batches]), split.camids)
    assert all(b["valid"].all() and b["valid"].dtype == bool for b in batches)
    images = np.concatenate([b["images"] for b in batches])
    assert images.shape == (13, *IMG, 3) and images.dtype == np.float32
    for i in (0, 6, 12):
        np.testing.assert_array_equal(images[i], views.eval_view(_decode(split, i), IMG, cfg.data.mean, cfg.data.std))


def test_eval_padding_and_process_slices():
    split, cfg = _eval_split(), _config()
    plain = np.concatenate([b["images"] for b in pipeline.eval_batches(cfg, split)])
    padded = list(pipeline.eval_batches(cfg, split, pad_to=4))
    assert [len(b["valid"]) for b in padded] == [8, 8, 4]
    assert [int(b["valid"].sum()) for b in padded] == [5, 5, 3]
    for b in padded:
        assert not b["valid"][b["valid"].sum() :].any()  # padding only at the end
        assert (b["pids"][~b["valid"]] == -1).all() and (b["camids"][~b["valid"]] == 0).all()
    valid_images = np.concatenate([b["images"][b["valid"]] for b in padded])
    np.testing.assert_array_equal(valid_images, plain)
    # two processes: equal parts that concatenate to the padded global batch
    parts = [list(pipeline.eval_batches(cfg, split, pad_to=4, process_index=i, process_count=2)) for i in range(2)]
    for j, g in enumerate(padded):
        assert len(parts[0][j]["valid"]) == len(parts[1][j]["valid"]) == len(g["valid"]) // 2
        for k in g:
            np.testing.assert_array_equal(np.concatenate([parts[0][j][k], parts[1][j][k]]), g[k], err_msg=k)


def test_eval_batches_with_workers_keep_order(parsed_flags):
    split, cfg = _eval_split(), _config(num_workers=2)
    it = pipeline.eval_batches(cfg, split)
    try:
        pids = [b["pids"] for b in it]
    finally:
        it.close()
    assert [len(p) for p in pids] == [5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(pids), split.pids)


def test_integration_with_real_builder_split_parsing_and_occluders(tmp_path, parsed_flags):
    """Real pieces: a Market-layout folder -> TFDS array_record split -> parsing targets file -> pipelines."""
    from fixtures import make_market1501
    from tmspr_jax.data import parsing, sources

    truth = make_market1501(tmp_path / "raw", train_ids=(2, 7, 11, 1501, 20, 33), per_id=3)
    data_dir = str(tmp_path / "tfds")
    split = sources.open_split("market1501", "train", data_dir, manual_dir=truth.manual_dir)
    cfg = _config(batch_size=4, k=2)
    cfg.data.data_dir = data_dir
    names = [str(n) for n in split.file_names]
    stored = np.random.default_rng(0).random((len(names), *GRID, 6)).astype(np.float32)
    stored /= stored.sum(-1, keepdims=True)  # a distribution per patch, as the loader requires
    order = np.random.default_rng(1).permutation(len(names))  # the file's order differs from the record order
    parsing.save_targets(
        parsing.default_path(data_dir, "market1501", GRID),
        [names[i] for i in order],
        stored[order],
        img_size=IMG,
        patch=16,
        stride=(11, 11),
        method="patch_mean",
    )
    targets = parsing.load_targets(cfg.parsing, split, GRID, data_dir, "market1501")

    # occluders=None: the covering view's occluders come from the training split itself
    serial = list(pipeline.TrainPipeline(cfg, split, targets).epoch_iterator(0, num_batches=3))
    cfg.data.num_workers = 2
    it = pipeline.TrainPipeline(cfg, split, targets).epoch_iterator(0, num_batches=3)
    try:
        parallel = list(it)
    finally:
        it.close()
    _assert_batches_equal(serial, parallel)
    truth_rows = {n: (p, c) for n, p, c in truth.splits["train"]}
    for batch in serial:
        idx = batch["index"]
        assert [truth_rows[names[i]] for i in idx] == list(zip(batch["pids"].tolist(), batch["camids"].tolist()))
        np.testing.assert_array_equal(batch["parsing"], stored[idx])
        assert np.all(batch["pids"].reshape(2, 2) == batch["pids"].reshape(2, 2)[:, :1])

    query = sources.open_split("market1501", "query", data_dir)
    got = list(pipeline.eval_batches(_config(), query))
    assert [len(b["pids"]) for b in got] == [5, 4]
    assert list(np.concatenate([b["pids"] for b in got])) == list(query.pids)

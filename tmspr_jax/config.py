"""Settings shared by every T-MSPR config: the reference's defaults (``docs/reference.md`` §11.3).

Each dataset config calls :func:`get_base_config` and overrides what its reference yml overrides, so every key
exists in every config: code reads them as attributes (``cfg.optim.base_lr``), and their defaults live here alone.
Keys are read by:

* ``model``   -> ``tmspr_jax.models.build_model``
* ``data``    -> ``tmspr_jax.data.pipeline`` (``synthetic``, ``synthetic_options``: ``tmspr_jax.datagen.ensure``)
* ``parsing`` -> ``tmspr_jax.data.parsing`` (``maps_dir``, ``parser*``: ``tmspr_jax.datagen.ensure``)
* ``loss``    -> ``tmspr_jax.losses``
* ``optim``   -> ``tmspr_jax.optim``
* ``train``   -> ``tmspr_jax.train``
* ``eval``    -> ``tmspr_jax.evaluate``
"""

from __future__ import annotations

import os

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


def default_data_dir() -> str:
    """Where prepared TFDS datasets live unless ``--config.data.data_dir`` says otherwise."""
    return os.environ.get("TMSPR_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 1234  # SOLVER.SEED
    c.img_size = (256, 128)  # INPUT.SIZE_TRAIN == SIZE_TEST, (H, W)
    c.init_checkpoint = ""  # converted or trained checkpoint to start from / evaluate (--mode=eval)
    c.init_step = -1  # step of a training workdir's init_checkpoint; -1 = the best by mAP, else the latest

    # ---------------------------------------------------------------- model (docs/reference.md §2-§8)
    m = c.model = ml_collections.ConfigDict()
    # MODEL.TRANSFORMER_TYPE, one of tmspr_jax.models.vit.BACKBONES ({vit,deit}_{base,small}_patch16_224_TransReID):
    # it fixes the shape rules (qkv bias, attention scale); the sizes below must be its own (models.vit.
    # backbone_settings gives them) or, for small test models, those of none of the four.
    m.backbone = "vit_base_patch16_224_TransReID"
    m.patch_size = 16
    m.stride = (11, 11)  # MODEL.STRIDE_SIZE (y, x)
    m.embed_dim = 768
    m.depth = 12
    m.num_heads = 12
    m.mlp_ratio = 4.0
    m.drop_path = 0.1  # MODEL.DROP_PATH; per-block rates linspace(0, drop_path, depth)
    m.sie_camera = True
    m.sie_view = False
    m.sie_coe = 3.0
    m.re_arrange = True
    m.shift_num = 5  # effective cyclic shift is shift_num - 1 (reference quirk)
    m.shuffle_groups = 2
    m.divide_length = 6  # T-MSPR default (TransReID: 4)
    # 'batch' = reference (min-max over the whole batch); 'sample' = per image; 'none' = softmax of the raw logits
    m.part_norm = "batch"
    # 'scale' = reference (patch tokens times the part attention: b2's LayerNorm undoes it, so the six part features
    # are one vector); 'attention' = log attention added to b2's attention scores (see models.branches.PART_POOLS)
    m.part_pool = "scale"
    m.neck_feat = "before"  # eval feature: 'before' (7680-d) or 'after' (3840-d)
    # 'linear' = the reference's classifiers; 'cosine' = cosine similarities, for loss.id_loss other than 'softmax'
    m.classifier = "linear"
    # Training compute dtype: 'float32' or 'bfloat16' (parameters, optimiser, norms, softmax and losses stay float32);
    # the configs that reproduce the paper train in bfloat16, as the reference's fp16 autocast; eval.dtype evaluates
    m.dtype = "float32"
    # What the backward pass keeps of each transformer block (models.vit.REMAT_MODES, docs/memory.md): 'dots' (the
    # matmul outputs; LayerNorm, attention scores, GELU recomputed), 'none' (everything), 'block' (the input only)
    m.remat = "dots"
    # The backbone's attention (models.vit.attention_implementation): 'auto' (cuDNN's fused kernel for 16-bit on an
    # NVIDIA GPU, XLA's path elsewhere), 'xla', or 'cudnn' (refused where it does not apply)
    m.attention = "auto"
    m.stack_branches = True  # run views / JPM groups / part sequences as stacked batches (same result)
    # The paper's three additions to TransReID, each switchable for the ablation (configs/occ_duke_ablation_*.py):
    m.multi_view = True  # the four training views (False: the based view only)
    m.perception = True  # HSPM: part head, part features, segmentation loss (False: no parsing targets needed)
    m.recovery = True  # HSRM: recovered-part feature and reconstruction loss (needs perception)
    m.pretrained = ""  # ImageNet ViT: .pth / .npz / .safetensors / converted orbax folder
    # A trained T-MSPR / TransReID model as `pretrained` for data of other identities or cameras: 'strict' refuses
    # it; 'reinit' keeps its backbone, b1/b2, part head and BNNecks and re-initialises the classifiers (and the SIE
    # camera table when the camera count differs): fine-tuning on new identities (convert_weights.convert.fine_tune).
    m.pretrained_heads = "strict"
    # Start of the position embedding when it is not loaded: 'normal' (the reference's N(0, 0.02)) or 'sincos'
    # (2-D sine-cosine codes, for training from scratch; see tmspr_jax.models.vit.sincos_embedding).
    m.pos_embed_init = "normal"

    # ---------------------------------------------------------------- data (docs/reference.md §1, §11)
    d = c.data = ml_collections.ConfigDict()
    d.train = "occluded_duke"  # TFDS builder providing the train split
    d.test = "occluded_duke"  # TFDS builder providing query + gallery
    d.data_dir = default_data_dir()
    d.manual_dir = ""  # raw release folder; if set, missing TFDS datasets are built from it on first use
    d.mean = HALF_MEAN
    d.std = HALF_STD
    d.batch_size = 32  # SOLVER.IMS_PER_BATCH (global, all devices and hosts)
    d.num_instances = 4  # DATALOADER.NUM_INSTANCE (K); P = batch_size // K identities per batch
    d.test_batch_size = 256  # TEST.IMS_PER_BATCH: with part_norm='batch' features depend on it
    d.num_workers = 8  # grain worker processes for the training views (0 = in-process)
    d.prefetch_buffer = 2
    d.occluder_source = ""  # '' = training split in use; or a builder name whose train images give occluders
    # A folder of occluder images (object crops, e.g. from COCO) instead of training images; '' = not used.
    d.occluder_dir = ""
    d.occluder_normalize = False  # False = reference quirk: occluder pasted in [0,1], un-normalised
    # Horizontal flip of the training image (all four views, parsing target mirrored) with this probability.
    # 0 = reference: T-MSPR removed TransReID's RandomHorizontalFlip(0.5) (docs/reference.md §1).
    d.flip_prob = 0.0
    d.synthetic = False  # generate the synthetic occluded dataset into manual_dir on first use (the demo)
    # Its options: fields of tmspr_jax.datagen.synthetic.SyntheticOptions (the generator's defaults where not set).
    d.synthetic_options = ml_collections.ConfigDict()

    # ---------------------------------------------------------------- parsing targets (docs/reference.md §12)
    p = c.parsing = ml_collections.ConfigDict()
    p.path = ""  # '' = stored with the dataset (see tmspr_jax.data.parsing)
    p.missing = "error"  # 'error' or 'zero_weight'
    p.maps_dir = ""  # LIP maps (<stem>.png / .npy); if set, targets missing from `path` are computed on first use
    # Converted SCHP LIP parser folder (python -m convert_weights schp): if set (and maps_dir is not), targets
    # missing from `path` are made from the training images on first use, with no intermediate files.
    p.parser = ""
    p.parser_dtype = "float32"  # or 'bfloat16' (faster on accelerators)
    p.parser_batch_size = 8  # images per device per parser batch
    p.method = "patch_mean"  # 'patch_mean' (each patch's own window) or 'reference' (bilinear resize to the grid)

    # ---------------------------------------------------------------- losses (docs/reference.md §9)
    lo = c.loss = ml_collections.ConfigDict()
    lo.id_weight = 1.0
    lo.triplet_weight = 1.0
    lo.seg_weight = 0.25
    # 'minmax_mse' = the reference (MSE of per-channel min-max-normalised maps); 'soft_ce' = per-patch cross-entropy
    # with the parts' shares, which a constant map cannot satisfy (the demo's part head learns nothing under the former)
    lo.seg_loss = "minmax_mse"
    lo.rec_weight = 1.0
    lo.kl_weight = 0.0  # computed and logged; the reference never adds it
    lo.label_smoothing = 0.0  # IF_LABELSMOOTH 'off'
    # 'softmax' = the reference's cross-entropy on linear logits; 'cosface', 'arcface' or 'circle' (fast-reid's
    # CosSoftmax, ArcSoftmax, CircleSoftmax) need model.classifier='cosine' and use id_scale and id_margin.
    lo.id_loss = "softmax"
    lo.id_scale = 30.0
    lo.id_margin = 0.35
    lo.triplet_margin = 0.0  # 0 = soft margin (NO_MARGIN=True)
    lo.triplet_norm_feat = False  # L2-normalise features before the triplet distances (fast-reid NORM_FEAT)

    # ---------------------------------------------------------------- optimiser (docs/reference.md §10)
    o = c.optim = ml_collections.ConfigDict()
    o.name = "sgd"  # 'sgd' (reference) or 'adamw'
    o.base_lr = 0.008
    o.momentum = 0.9
    o.weight_decay = 1e-4
    o.weight_decay_bias = 1e-4
    o.bias_lr_factor = 2.0
    o.warmup_epochs = 5
    o.warmup_lr_init_factor = 0.01  # warmup_lr_init = 0.01 * base_lr (absolute, all groups)
    o.min_lr_factor = 0.002  # lr_min = 0.002 * base_lr (absolute, all groups)

    # ---------------------------------------------------------------- training loop
    t = c.train = ml_collections.ConfigDict()
    t.epochs = 170
    t.eval_period = 5  # epochs
    t.log_every = 50  # steps
    t.checkpoint_every = 1  # epochs
    t.checkpoint_every_steps = 0  # >0: also save mid-epoch (the data position is saved with it)
    t.keep_checkpoints = 2  # latest N, plus the best by mAP
    t.max_steps_per_epoch = 0  # 0 = the sampler's full epoch; >0 caps it (smoke tests)
    t.eval_untrained = False  # evaluate the initial weights first and write results_untrained.json

    # ---------------------------------------------------------------- evaluation (docs/reference.md §13)
    e = c.eval = ml_collections.ConfigDict()
    e.feat_norm = True
    # Compute dtype of the test features ('float32' or 'bfloat16'): the reference evaluates without autocast, in
    # float32, whatever model.dtype trains in
    e.dtype = "float32"
    e.max_rank = 50
    e.rerank = False
    e.flip = False  # average each test feature with its mirror image's (fast-reid TEST.FLIP); not in the reference
    # 95% intervals of every metric from this many bootstrap draws of the test identities (results.json 'ci95');
    # 0 = off.
    # Not in the reference: they show how much a figure rests on the few hundred people of a test set.
    e.bootstrap_samples = 1000
    e.k1 = 20
    e.k2 = 6
    e.lambda_value = 0.3
    return c


# ---------------------------------------------------------------- the demo
def cache_dir() -> str:
    return os.environ.get("TMSPR_CACHE", os.path.expanduser("~/.cache/tmspr_jax"))


def demo_config() -> ml_collections.ConfigDict:
    """The demo's settings (``configs/demo.py`` documents the command, data, result and time)."""
    c = get_base_config()
    c.img_size = (128, 64)
    root = os.path.join(cache_dir(), "demo")

    c.data.train = "synthetic_occluded"
    c.data.test = "synthetic_occluded"
    c.data.data_dir = os.path.join(root, "tfds")
    # Lazy: the label maps and occluder folders below follow --config.data.manual_dir when it is overridden.
    manual_dir = ml_collections.FieldReference(os.path.join(root, "synthetic"))
    c.data.manual_dir = manual_dir
    c.data.mean = HALF_MEAN
    c.data.std = HALF_STD
    # Batch 16 = 4 identities x 4 images: twice the updates of the reference's 32 for the same images, which a model
    # learning from scratch uses better (docs/experiments.md §2).
    c.data.batch_size = 16
    c.data.num_instances = 4
    c.data.test_batch_size = 128
    c.data.num_workers = 1
    c.data.synthetic = True  # generate the dataset into manual_dir on first use
    # 400 training identities x 8 images for 12 epochs: at the same steps more identities transfer better than more
    # epochs on fewer (docs/experiments.md §3). Muted backgrounds, like streets; identities differing in at least 5 of
    # the 10 attributes (§2).
    c.data.synthetic_options = dict(
        num_train_ids=400,
        images_per_id=8,
        num_test_ids=50,
        queries_per_id=2,
        gallery_per_id=6,
        camera_strength=0.4,
        min_attribute_diff=5,
        background_saturation=0.3,
        num_occluder_images=400,
        # 30% of the training images occluded like the queries (their label maps mark the occluder as background)
        # instead of the generator's 10%: it helps together with the per-patch segmentation loss
        # (docs/experiments.md §4).
        train_occluded_fraction=0.3,
        seed=0,
        # the test set from its own random streams, so that training sets of other sizes compare on the same queries
        independent_test_set=True,
    )
    # The covering view pastes street-object occluders (rendered like, but independently of, the queries' ones)
    # instead of crops of other training people, un-normalised as the reference does (docs/experiments.md §2).
    c.data.occluder_dir = manual_dir + "/occluders"
    c.parsing.maps_dir = manual_dir + "/parsing_lip"

    m = c.model
    m.patch_size = 16
    m.stride = (16, 16)
    # Width 96 steps 1.3x faster than 128 on a CPU, so more epochs fit in the same time (docs/experiments.md §2).
    m.embed_dim = 96
    m.depth = 4
    m.num_heads = 4
    m.drop_path = 0.0
    m.sie_coe = 1.0
    # From scratch the position embedding starts as 2-D sine-cosine codes instead of N(0, 0.02) noise: the model
    # does not spend its first epochs learning where each patch lies (docs/experiments.md §6).
    m.pos_embed_init = "sincos"
    # The reference's default test feature, before the BNNecks: [g1, JPM 1-4, parts 1-5]; with these settings it
    # scores above the BNNeck features ('after') (docs/experiments.md §2).
    m.neck_feat = "before"

    # A per-patch cross-entropy against the parts' shares instead of the reference's min-max-normalised MSE, which a
    # constant map satisfies (the part head learns nothing under it at this size; docs/experiments.md §4).
    c.loss.seg_loss = "soft_ce"

    c.optim.name = "adamw"
    c.optim.base_lr = 2e-3
    c.optim.weight_decay = 0.05
    c.optim.weight_decay_bias = 0.0
    c.optim.bias_lr_factor = 1.0
    c.optim.warmup_epochs = 2

    c.train.epochs = 12
    c.train.eval_period = 6
    c.train.log_every = 10
    c.train.eval_untrained = True
    # Test features averaged with their mirror images' (fast-reid's TEST.FLIP): 4-5 points of mAP (docs/experiments.md
    # §2); evaluating only twice (after 1,200 and 2,400 steps) pays for the second pass.
    c.eval.flip = True
    return c

"""The default run: LeNet-5 on the offline digits, Adam with the paper's hyper-parameters.

Any key can be overridden on the command line as ``--config.KEY=VALUE``; a config file
(``--config FILE``) defines ``get_config()`` and starts from this one or writes its own.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "lenet5"
    config.dataset = "digits"
    config.data_dir = ""          # TFDS data directory; "" means TFDS's default
    config.manual_dir = ""        # folder of the original files, for an offline build
    config.input_mode = "auto"    # auto | memory (on device) | stream (tf.data) | host
    config.preprocess = "auto"    # auto | unit | centered | per_pixel | per_channel | imagenet
    config.augment = ""           # e.g. "crop:4,flip,rotate:10,translate:2,noise:0.02"
    config.image_size = 0         # crop size for datasets of varying image size (0: 224)
    config.num_classes = 0        # 0: the dataset's class count
    config.epochs = 15
    config.batch_size = 32
    config.eval_batch_size = 256
    config.seed = 0
    config.optimizer = "adam"     # adam | sgd | adadelta
    config.lr = 1e-3
    config.schedule = "cosine"    # cosine: lr decays to 0 over the run; constant: classic Adam
    config.b1 = 0.9
    config.b2 = 0.999
    config.eps = 1e-8
    config.momentum = 0.9         # sgd only
    config.parallel = "jit"       # jit (mesh + shardings) | pmap: data parallel over devices
    config.ghost_bn = False       # BatchNorm statistics per device instead of global
    config.dtype = "float32"      # compute: float32 | bfloat16 | float16 (loss-scaled); params f32
    config.checkpoint_keep = 3    # newest checkpoints kept in the run's checkpoints/
    config.checkpoint_every_steps = 0  # also save every N steps (0: at epoch ends only)
    config.best_metric = "test_accuracy"  # the best checkpoint (checkpoints/best) by this
    config.nonfinite = "stop"     # stop | skip | ignore: a step with a NaN/inf loss or gradient
    # Data subsets (TFDS split syntax), model arguments, transfer learning (jaxcnn.train.transfer).
    config.train_split = "train"  # e.g. "train[:4000]": train on the first 4,000 examples
    config.eval_split = "test"    # evaluated after every epoch (reported as test_*)
    config.model_kwargs = ml_collections.ConfigDict()  # builder arguments, e.g. kernel_init
    config.init_from = ""         # run directory or torchvision weights (.npz/.pth) to start from
    config.head = ""              # the classifier module(s) to re-initialise ("": found)
    config.freeze = ""            # path patterns kept fixed, e.g. "backbone" or "conv1,conv2"
    config.trainable = ""         # or: the only patterns trained, e.g. "head"
    config.lr_groups = ""         # per-pattern learning rates, e.g. "head=1e-3,backbone=1e-4"
    return config

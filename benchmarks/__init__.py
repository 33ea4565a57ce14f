"""Performance measurements (never timed unit tests): run as modules from the repository root,
e.g. `python -m benchmarks.train_step --model=DiT-S/2 --batch=32`. Each prints markdown rows and
writes every figure with its command and environment to --out as JSON.

    train_step, scaling, sampling, input_pipeline,     the benchmarks
    autoencoder, vs_pytorch, trainer_speed,
    repa_features, repa_digits
    torch_dit                                          vs_pytorch's PyTorch DiT (torch only)
    cli_args, host, timing, memory, report             what they share
"""

"""Training configs: one module per experiment (`get_config()`), each docstring holding the command
and the expected result; `imagenet_common` is the ImageNet recipe the ImageNet configs share."""

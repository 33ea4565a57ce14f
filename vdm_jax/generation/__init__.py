"""Generation: samples of a trained model under a `SamplingSpec` (a sibling of training and
evaluation; it imports neither).

    generate   the jitted sampling call (guidance, learned variance, sharding)
    batches    large resumable sample batches in ADM `.npz` files (launch/sample.py)
    grids      PNG grids of samples
"""

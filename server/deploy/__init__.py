"""Backends beyond one process: the engine behind another scheduler or transport (an optional extra).

Nothing here is imported by the default server; each module imports its own framework (Ray Serve:
``pip install 'cbp-tuning[ray]'``) only when that backend is chosen.
"""

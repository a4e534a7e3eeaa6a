"""Benchmarks anyone can run from the repository root: ``python -m benchmarks.<name>``.

    throughput   Evaluate's speed as ratios to plain matmuls timed in the same run
    main_job     the README's main job before and after the speed work, side by side
    accuracy     held-out accuracy against calls, every method, seeds stated

Each writes its tables and plots to benchmarks/results/, which the README links.
"""

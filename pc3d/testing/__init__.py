"""Test-only helpers that are not part of the library's data flow: writers that produce real on-disk formats
(Waymo TFRecords, nuScenes tables) from synthetic frames, and brute-force references (ray caster, dense
attention) that the fast paths are checked against. Tests and benchmarks import them; the library never does.
"""

"""The benchmarks' shared parts: a small package beside the scripts that use it.

* :mod:`flashbench.harness` - timing (warm-up, interleaved rotating rounds, medians, the wall
  and CPU clocks, ``gc`` frozen), the glibc heap setting, RSS sampling, machine information;
* :mod:`flashbench.models` - the benchmark's models (random weights unless bundled);
* :mod:`flashbench.limits` - the physical limits (forward + ``autograd.grad``, forwards only);
* :mod:`flashbench.registry` - which methods are benchmarked, read from
  ``flashtorch.METHODS`` with the exclusions stated;
* :mod:`flashbench.peers` - adapters calling Captum, pytorch-grad-cam and FlashTorch 0.1.3;
* :mod:`flashbench.cases` - one case per (model, batch, family), built from the registry;
* :mod:`flashbench.memory`, :mod:`flashbench.floors`, :mod:`flashbench.report` - peak memory,
  the PASS / FAIL floors and the JSON / Markdown report.

``benchmarks/bench_attribution.py`` is the command line over them; ``bench_rollout.py`` and
``bench_vit_cam.py`` use the harness. The scripts put ``benchmarks/`` on ``sys.path``.
"""

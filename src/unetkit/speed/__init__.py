"""Speed measurements of models (``unetkit bench``): latency, throughput, FLOPs, GEMM ceiling.

A layer of its own beside ``training``, ``evaluation`` and ``serve``: it builds models, runs
losses and optimiser steps, and runs exported ONNX models through the inference backends, so it
sits above ``models``, ``losses`` and ``inference`` and below ``cli`` only.
"""

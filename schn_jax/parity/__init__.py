"""Parity with the official PyTorch implementation: research and test tooling.

fixtures    fixture folders: reading (both layouts), packing, writing
tolerances  what counts as agreeing, and why
build       our config, model and parameters for a fixture
step        the step fixtures' checks
trajectory  the trajectory fixtures' replay through our training loop
check       the command that runs them all
pack        the command that packs fixture folders for the repository
capture     the command that records a trajectory from a reference checkout

It uses the library; nothing in the library uses it.
"""

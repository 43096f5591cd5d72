"""Design-space sweeps, reports and paper reproductions built on the simulator."""

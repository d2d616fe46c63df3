"""Real PyTorch executor: runs the schedules spdsim simulates, measures them, writes profiles and traces."""

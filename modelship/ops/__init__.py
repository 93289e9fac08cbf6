"""Operating ModelShip: the CLI, preflight checks, smoke tests and how Ray is started."""

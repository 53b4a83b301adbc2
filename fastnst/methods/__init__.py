"""Style-transfer methods built on fastnst's ops; each exposes stylize() (and train())."""

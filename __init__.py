"""keyprop: propagate clean keyframes through a shot (two-stream model of Esser et al. 2022)."""

__version__ = "0.1.0"

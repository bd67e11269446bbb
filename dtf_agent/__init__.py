"""DTF agent: runs on each test machine. Imports no Qt, numpy, scipy or coordinator code."""

__version__ = "0.1.0"

"""Data plane: the Engine protocol, the continuous-batching scheduler and its model runners."""

"""Jobs: the spec users write, the status model, the pure state machine and the use cases."""

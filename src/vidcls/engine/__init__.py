"""The forward engine: members loaded from a run, views of a sequence, one forward pass over members x views, softmax with temperature, OOD scores."""

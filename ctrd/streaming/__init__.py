"""Named bidirectional streams between clients and daemon-side work (containerd 2.x's
streaming manager): a client opens one over the Streaming service and names it; a Transfer
request then refers to it by name for progress, credentials or archive bytes."""

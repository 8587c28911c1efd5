"""The CRI streaming server: exec, attach and port-forward sessions the kubelet proxies to
(SPDY/3.1 and WebSocket channel protocols), and the RuntimeService methods that hand out their
single-use URLs."""

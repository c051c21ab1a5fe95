"""What the tests share, imported as ``tests.support.<module>`` (pytest puts the repository root on ``sys.path``):

- ``idp``: test identity providers, their keys and tokens, in process or served over HTTPS;
- ``exchange``: the exchange server in process: resource objects, a fixed snapshot source and clock, a client;
- ``attacks``: the security corpus' configuration, raw requests and the assertion every refusal must pass;
- ``controlplane``, ``node``: the real Kubernetes control plane and worker node (also ``make cluster-up``);
- ``processes``: free ports and stopping process groups.
"""

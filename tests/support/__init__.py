"""What the tests share, imported as ``tests.support.<module>`` (pytest puts the repository root on ``sys.path``):

- ``idp``: test identity providers, their keys and tokens, in process or served over HTTPS;
- ``exchange``: the exchange server in process: resource objects, manifests, a fixed snapshot source and clock,
  a client;
- ``attacks``: the security corpus' configuration, raw requests and the assertion every refusal must pass;
- ``controlplane``, ``node``: the real Kubernetes control plane and worker node (also ``make cluster-up``);
- ``deployment``: ``tokenbridge operator`` and ``tokenbridge serve --kubernetes`` run against the control plane;
- ``dockerfile``: the Dockerfile's build context, copied as its build stage sees it;
- ``processes``: free ports and stopping process groups.
"""

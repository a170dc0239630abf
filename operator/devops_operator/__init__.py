"""The DevOps-Model operator (kopf): types -> pure builders -> thin handlers -> one API module.

Run it with ``devops-model operator`` against the current kubeconfig.
"""

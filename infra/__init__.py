"""Deployment: the CloudFormation merged into `chalice package` and the scripts that package and deploy it."""

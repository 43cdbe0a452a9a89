"""The kubernetes backend: batch/v1 Jobs on EKS, GKE or any cluster a kubeconfig names (optionally under Kueue)."""

"""AWS backends: SageMaker, Batch, ECS, EC2, their shared base and error table."""

"""Side-by-side baselines: the bare libraries the gateway stands on, and a RabbitMQ Web-STOMP feeder."""

"""Models: the timm encoder factory, the MoE projector, and the student/teacher pair."""

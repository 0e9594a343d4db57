"""The stubs generated from proto/recommender/v1/recommender.proto, and the service's full name taken from them."""

from recommender.v1 import recommender_pb2

SERVICE_NAME: str = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name

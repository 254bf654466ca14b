"""Provable one-pixel answers: sound bounds over a pixel's cone and the certify stage."""

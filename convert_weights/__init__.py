"""convert_weights"""

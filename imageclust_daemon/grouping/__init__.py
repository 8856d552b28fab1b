"""Grouping: the pure cores (albums by meaning: cluster; events: events; titles: label;
subjects), and the use cases that write them to the store (regroup), with Ollama and
the offline gazetteer."""

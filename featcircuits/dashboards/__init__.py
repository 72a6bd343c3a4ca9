"""featcircuits.dashboards"""

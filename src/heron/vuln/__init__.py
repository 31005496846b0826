"""Vulnerabilities: version orderings, OSV advisories, matching inventories, risk ranking.

``versions`` compares versions per ecosystem; ``osv`` reads OSV records hostile-safely; ``db``
stores advisories (a SQLite file beside the platform's database); ``match`` finds the
advisories that affect installed packages; ``risk`` scores and ranks the findings.
"""

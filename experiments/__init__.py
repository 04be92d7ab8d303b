"""The reference essay's claims, reproduced on real data (issue 7); see README.md here."""

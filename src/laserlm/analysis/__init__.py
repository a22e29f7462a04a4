"""The paper's analyses, and the report and plots of a search run."""

"""What a run leaves behind: the Parquet report (`reports`), its static HTML page (`html_report`) and the results
document beside the paper (`results_doc`).

Empty on purpose: importing the package imports nothing heavy.
"""

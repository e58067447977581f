"""Locate, then edit: does localization inform editing? (Hase et al. 2023.)"""
